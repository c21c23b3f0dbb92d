"""x402 payment requirements, read as received (pure: standard library only).

A resource server answers `402 Payment Required` with what it accepts:

- x402 v2: the `PAYMENT-REQUIRED` header, base64 of JSON `{x402Version: 2, resource,
  accepts: [{scheme, network (CAIP-2), amount, asset, payTo, maxTimeoutSeconds, extra}]}`;
  the client answers with `PAYMENT-SIGNATURE`: base64 of `{x402Version: 2, resource,
  accepted: <the entry, as received>, payload: <the scheme's signed payload>}`.
- x402 v1: the 402 JSON body `{x402Version: 1, accepts: [{scheme, network (a name such as
  "base-sepolia"), maxAmountRequired, asset, payTo, maxTimeoutSeconds, resource, extra}]}`;
  the client answers with `X-PAYMENT`: base64 of `{x402Version: 1, scheme, network, payload}`.

zpay pays an entry only with scheme `exact`, on the session key's network (its CAIP-2 id
or a v1 name, from the chain registry) and in the key's token. Amounts are integers in
base units here, as on the wire; nothing is rounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from zpay.domain.errors import InvalidRequest

SCHEME_EXACT = "exact"
V2_REQUEST_HEADER = "PAYMENT-SIGNATURE"
V1_REQUEST_HEADER = "X-PAYMENT"
V2_RESPONSE_HEADER = "PAYMENT-RESPONSE"
V1_RESPONSE_HEADER = "X-PAYMENT-RESPONSE"
# A signed authorization stays valid (and its hold stays held) at most this long, whatever
# the server's maxTimeoutSeconds allows.
MAX_VALIDITY_S = 3600
MAX_ENCODED_CHARS = 64 * 1024  # a 402's requirements are small; refuse a huge one cheaply
_UINT = re.compile(r"^(0|[1-9][0-9]{0,77})$")  # uint256 as a decimal string


class X402Invalid(InvalidRequest):
    """The requirements (or a settlement report) are not x402 as specified."""

    code = "x402_requirements_invalid"


class X402Unpayable(InvalidRequest):
    """No `accepts` entry is one this session key can pay; `code` says what was missing."""

    code = "x402_unsupported_network"


@dataclass(frozen=True)
class Requirement:
    """One `accepts` entry. `raw` is the entry exactly as received (v2 echoes it back)."""

    scheme: str
    network: str
    asset: str
    amount: int  # base units: v2 `amount`, v1 `maxAmountRequired`
    pay_to: str
    max_timeout_s: int
    extra: Mapping[str, Any]
    raw: Mapping[str, Any]

    @property
    def validity_s(self) -> int:
        return min(self.max_timeout_s, MAX_VALIDITY_S)


@dataclass(frozen=True)
class PaymentRequired:
    version: int
    accepts: tuple[Requirement, ...]
    resource: Mapping[str, Any] | None = None  # v2 `resource` object
    extensions: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def request_header(self) -> str:
        return V2_REQUEST_HEADER if self.version == 2 else V1_REQUEST_HEADER

    def resource_url(self, requirement: Requirement | None = None) -> str | None:
        if self.resource is not None and isinstance(self.resource.get("url"), str):
            return str(self.resource["url"])
        if requirement is not None and isinstance(requirement.raw.get("resource"), str):
            return str(requirement.raw["resource"])
        return None


@dataclass(frozen=True)
class SettlementReport:
    """A PAYMENT-RESPONSE header as the agent received it: a claim, never evidence."""

    success: bool
    transaction: str
    network: str | None
    payer: str | None
    error_reason: str | None


def _b64_json(text: str, what: str) -> Any:
    if len(text) > MAX_ENCODED_CHARS:
        raise X402Invalid(f"{what} is too large")
    try:
        return json.loads(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise X402Invalid(f"{what} is not base64-encoded JSON") from exc


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, str):  # x402 writes uint256 amounts as strings
        raise X402Invalid(f"`{name}` must be an integer string")
    text = value
    if not _UINT.match(text):
        raise X402Invalid(f"`{name}` must be a non-negative integer in base units")
    return int(text)


def _text(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise X402Invalid(f"`{name}` must be a non-empty string")
    return value


def _requirement(entry: Any, version: int) -> Requirement:
    if not isinstance(entry, Mapping):
        raise X402Invalid("every `accepts` entry must be an object")
    amount_field = "amount" if version == 2 else "maxAmountRequired"
    extra = entry.get("extra") or {}
    if not isinstance(extra, Mapping):
        raise X402Invalid("`extra` must be an object")
    timeout = entry.get("maxTimeoutSeconds")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise X402Invalid("`maxTimeoutSeconds` must be a positive integer")
    return Requirement(
        scheme=_text(entry, "scheme"), network=_text(entry, "network"),
        asset=_text(entry, "asset"), amount=_uint(entry.get(amount_field), amount_field),
        pay_to=_text(entry, "payTo"), max_timeout_s=timeout, extra=dict(extra),
        raw=dict(entry))


def parse_payment_required(value: str | Mapping[str, Any]) -> PaymentRequired:
    """The requirements as received: a v2 `PAYMENT-REQUIRED` header value (base64 JSON), or
    the decoded JSON object of either version (a v1 402 body)."""
    doc = _b64_json(value, "PAYMENT-REQUIRED") if isinstance(value, str) else value
    if not isinstance(doc, Mapping):
        raise X402Invalid("the payment requirements must be a JSON object")
    version = doc.get("x402Version")
    if version not in (1, 2) or isinstance(version, bool):
        raise X402Invalid("`x402Version` must be 1 or 2", code="x402_version_unsupported")
    accepts = doc.get("accepts")
    if not isinstance(accepts, list) or not accepts:
        raise X402Invalid("`accepts` must be a non-empty list")
    if len(accepts) > 32:
        raise X402Invalid("too many `accepts` entries")
    resource = doc.get("resource") if version == 2 else None
    if resource is not None and not isinstance(resource, Mapping):
        raise X402Invalid("`resource` must be an object")
    extensions = doc.get("extensions") if version == 2 else None
    return PaymentRequired(
        version=int(version), accepts=tuple(_requirement(e, int(version)) for e in accepts),
        resource=dict(resource) if resource is not None else None,
        extensions=dict(extensions) if isinstance(extensions, Mapping) else None,
        raw=dict(doc))


def same_asset(a: str, b: str) -> bool:
    """EVM addresses compare case-insensitively (checksums are a case convention); other
    asset ids (Solana mints, base58) exactly."""
    if a.startswith(("0x", "0X")) and b.startswith(("0x", "0X")):
        return a.lower() == b.lower()
    return a == b


def select(required: PaymentRequired, *, networks: Collection[str], asset: str,
           asset_matches: Callable[[str, str], bool] = same_asset) -> Requirement:
    """The entry this key pays: scheme `exact`, one of the key's network ids, its token;
    the cheapest if several qualify. X402Unpayable names the closest miss."""
    exact = [r for r in required.accepts if r.scheme == SCHEME_EXACT]
    if not exact:
        raise X402Unpayable("zpay pays only the x402 `exact` scheme",
                            code="x402_unsupported_scheme")
    on_network = [r for r in exact if r.network in networks]
    if not on_network:
        offered = sorted({r.network for r in exact})
        raise X402Unpayable(
            f"no `exact` entry on this session key's network ({', '.join(sorted(networks))});"
            f" offered: {', '.join(offered)}", code="x402_unsupported_network")
    payable = [r for r in on_network if asset_matches(r.asset, asset)]
    if not payable:
        raise X402Unpayable("no `exact` entry in this session key's token",
                            code="x402_unsupported_asset")
    positive = [r for r in payable if r.amount > 0]
    if not positive:
        raise X402Invalid("the required amount must be greater than zero")
    return min(positive, key=lambda r: r.amount)


def payment_header(required: PaymentRequired, requirement: Requirement,
                   scheme_payload: Mapping[str, Any]) -> tuple[str, str]:
    """(header name, value) the agent sends with its retried request."""
    doc: dict[str, Any]
    if required.version == 2:
        doc = {"x402Version": 2, "accepted": dict(requirement.raw),
               "payload": dict(scheme_payload)}
        if required.resource is not None:
            doc["resource"] = dict(required.resource)
    else:
        doc = {"x402Version": 1, "scheme": requirement.scheme, "network": requirement.network,
               "payload": dict(scheme_payload)}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return required.request_header, base64.b64encode(text.encode()).decode()


def parse_settlement_response(value: str) -> SettlementReport:
    """A `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE` header value (base64 JSON)."""
    doc = _b64_json(value, "PAYMENT-RESPONSE")
    if not isinstance(doc, Mapping) or not isinstance(doc.get("success"), bool):
        raise X402Invalid("PAYMENT-RESPONSE must be an object with a boolean `success`",
                          code="x402_settlement_invalid")
    tx = doc.get("transaction")
    if not isinstance(tx, str) or len(tx) > 200:
        raise X402Invalid("PAYMENT-RESPONSE `transaction` must be a string",
                          code="x402_settlement_invalid")

    def opt(name: str) -> str | None:
        v = doc.get(name)
        return v if isinstance(v, str) and len(v) <= 200 else None

    return SettlementReport(success=doc["success"], transaction=tx, network=opt("network"),
                            payer=opt("payer"), error_reason=opt("errorReason"))
