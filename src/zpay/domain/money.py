"""Money at the edge: decimal strings <-> integer base units. Never a float."""

from __future__ import annotations

import re

from zpay.domain.errors import InvalidAmount

_AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]*)(?:\.([0-9]+))?$")
# Longest integer part we even try to parse: keeps "absurdly large" input cheap to refuse.
_MAX_INTEGER_DIGITS = 60


def parse_amount(
    text: object, *, decimals: int, max_base_units: int, allow_zero: bool = False
) -> int:
    """Parse a token-unit decimal string ("29.99") into base units.

    More fractional digits than the token has is an error, never a rounding.
    """
    if not isinstance(text, str):
        raise InvalidAmount("amount must be a decimal string such as \"29.99\"")
    match = _AMOUNT_RE.match(text)
    if match is None:
        raise InvalidAmount(f"amount {text[:40]!r} is not a plain decimal string such as \"29.99\"")
    whole, frac = match.group(1), match.group(2) or ""
    if len(whole) > _MAX_INTEGER_DIGITS:
        raise InvalidAmount("amount is out of range", code="amount_out_of_range")
    if len(frac) > decimals:
        raise InvalidAmount(
            f"amount {text!r} has {len(frac)} decimals; this token has {decimals}",
            code="amount_precision_exceeded",
        )
    base_units = int(whole) * 10**decimals + (int(frac.ljust(decimals, "0")) if decimals else 0)
    if base_units > max_base_units:
        raise InvalidAmount("amount is out of range", code="amount_out_of_range")
    if base_units == 0 and not allow_zero:
        raise InvalidAmount("amount must be greater than zero")
    return base_units


def canonical_amount(text: object) -> object:
    """One spelling per value of a well-formed amount string ("0.020000" -> "0.02",
    "5.0" -> "5"), so equal requests compare equal; anything else is returned as it is
    (it is refused where it is parsed)."""
    if not isinstance(text, str):
        return text
    match = _AMOUNT_RE.match(text)
    if match is None:
        return text
    whole, frac = match.group(1), (match.group(2) or "").rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def format_amount(base_units: int, *, decimals: int) -> str:
    """Base units -> decimal string with exactly `decimals` fractional digits."""
    if not isinstance(base_units, int) or isinstance(base_units, bool):
        raise TypeError("base units must be an int")
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), 10**decimals)
    if decimals == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{decimals}d}"


def display_amount(base_units: int, *, decimals: int) -> str:
    """Base units -> what people read: thousands grouped, at least two decimals, no trailing
    zeros past them ("1,234.50", "0.000001"). The approval page's script formats decoded
    amounts the same way (static/approval.js `displayAmount`) and compares the two texts."""
    whole, _, frac = format_amount(base_units, decimals=decimals).partition(".")
    sign, whole = ("-", whole[1:]) if whole.startswith("-") else ("", whole)
    frac = frac.rstrip("0").ljust(min(2, decimals), "0")
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")
