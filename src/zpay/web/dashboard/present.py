"""How the dashboard shows what the services answer: amounts, times, usage bars.

The services answer the API's JSON views (decimal strings, ISO times); this module only
formats them. Amounts stay strings; a bar's width is a whole percent worked out exactly
with Decimal from those strings, never a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from zpay.services.pagination import Page


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def money(value: str | None, places_min: int = 2) -> str:
    """'12500.500000' -> '12,500.50': trailing zeros trimmed to `places_min`, grouped."""
    if value is None:
        return "—"
    sign = "-" if value.startswith("-") else ""
    whole, _, frac = value.lstrip("-").partition(".")
    frac = frac.rstrip("0")
    frac = frac + "0" * max(places_min - len(frac), 0)
    groups: list[str] = []
    while len(whole) > 3:
        whole, tail = whole[:-3], whole[-3:]
        groups.insert(0, tail)
    grouped = ",".join([whole or "0", *groups])
    return f"{sign}{grouped}.{frac}" if frac else f"{sign}{grouped}"


def percent(part: str | None, whole: str | None) -> int:
    """`part` of `whole` as a whole percent, 0..100 (a nonzero part shows at least 1)."""
    p, w = _decimal(part), _decimal(whole)
    if p is None or w is None or w <= 0 or p <= 0:
        return 0
    value = int(p * 100 / w)
    return max(1, min(100, value))


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def when(value: str | None) -> str:
    """'2026-11-29T13:05:00Z' -> '29 Nov 2026, 13:05 UTC'."""
    at = parse_ts(value)
    if at is None:
        return "—"
    return at.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC").lstrip("0")


def relative(value: str | None, now: datetime) -> str:
    """'in 3 h 20 min', '5 min ago', …"""
    at = parse_ts(value)
    if at is None:
        return ""
    delta = at - now
    future = delta >= timedelta(0)
    seconds = int(abs(delta.total_seconds()))
    if seconds < 60:
        return "in under a minute" if future else "just now"
    if seconds < 3600:
        text = f"{seconds // 60} min"
    elif seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        text = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days, hours = divmod(seconds // 3600, 24)
        text = f"{days} d {hours} h" if hours else f"{days} d"
    return f"in {text}" if future else f"{text} ago"


@dataclass(frozen=True)
class Meter:
    """One usage bar: `used` of `limit`, what is left and when room frees up."""

    label: str
    used: str
    limit: str
    remaining: str
    percent: int
    frees_up_at: str | None = None
    note: str = ""

    @property
    def full(self) -> bool:
        return _decimal(self.remaining) == 0


_WINDOW_LABELS = {"day": "Today", "week": "This week", "month": "This month"}
_ROLLING = {"day": "last 24 hours", "week": "last 7 days", "month": "last 30 days"}


def window_meters(session: dict[str, Any]) -> list[Meter]:
    """Bars for each window a linked policy session limits, from its status body."""
    windows = session.get("windows") or {}
    mode = windows.get("mode", "rolling")
    meters = []
    for name in ("day", "week", "month"):
        w = windows.get(name)
        if not w or w.get("limit") is None:
            continue
        note = _ROLLING[name] if mode == "rolling" else f"calendar, {windows.get('timezone')}"
        meters.append(Meter(label=_WINDOW_LABELS[name], used=w["used"], limit=w["limit"],
                            remaining=w["remaining"], percent=percent(w["used"], w["limit"]),
                            frees_up_at=w.get("frees_up_at"), note=note))
    if session.get("max_total") is not None:
        used = session["total_committed"]
        left = _decimal(session["max_total"]) or Decimal(0)
        left -= _decimal(used) or Decimal(0)
        meters.append(Meter(label="Session total", used=used, limit=session["max_total"],
                            remaining=str(max(left, Decimal(0))),
                            percent=percent(used, session["max_total"]), note="lifetime"))
    return meters


def balance_meter(key: dict[str, Any]) -> Meter:
    """The session wallet itself: spent and held out of what the user funded."""
    funded = key["funded_amount"]
    used = str((_decimal(key["spent_amount"]) or 0) + (_decimal(key["held_amount"]) or 0))
    return Meter(label="Balance used", used=used, limit=funded,
                 remaining=key["remaining_amount"], percent=percent(used, funded),
                 note="spent + held, of funded")


@dataclass(frozen=True)
class Pager:
    """Links for a cursor-paginated list: `next` continues after the last row shown."""

    path: str
    next_cursor: str | None
    first: bool
    params: dict[str, str]

    def href(self, cursor: str | None) -> str:
        query = {k: v for k, v in self.params.items() if v}
        if cursor:
            query["starting_after"] = cursor
        if not query:
            return self.path
        return self.path + "?" + urlencode(query)

    @property
    def next_href(self) -> str | None:
        return self.href(self.next_cursor) if self.next_cursor else None

    @property
    def first_href(self) -> str | None:
        return None if self.first else self.href(None)


def pager(path: str, body: dict[str, Any], page: Page, **params: str | None) -> Pager:
    """Links that keep the filters and page size of this list."""
    if page.limit != Page().limit:
        params["limit"] = str(page.limit)
    return Pager(path, body.get("next_cursor"), page.starting_after is None,
                 {k: v for k, v in params.items() if v})


class Formatter:
    """Handed to templates as `f`: `f.money(x)`, `f.when(ts)`, `f.ago(ts)`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    money = staticmethod(money)
    when = staticmethod(when)
    percent = staticmethod(percent)

    def ago(self, value: str | None) -> str:
        return relative(value, self.now)
