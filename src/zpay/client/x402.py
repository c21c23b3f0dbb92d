"""Pay x402-protected resources from a zpay session key, with httpx.

    from zpay.client import Zpay
    from zpay.client.x402 import fetch_with_payment

    with Zpay(agent_token) as zpay:
        r = fetch_with_payment(zpay, "https://api.example/forecast",
                               session_key_id=key_id, max_amount="0.05")
        print(r.response.json(), r.payment and r.payment.status)

The request is sent as is; on `402 Payment Required` the helper hands the requirements,
exactly as received (v2 `PAYMENT-REQUIRED` header, or a v1 JSON body), to zpay
(`POST /v1/x402/payments`: both layers, a hold, the signed `exact` payload), retries the
request once with the header zpay returned (`PAYMENT-SIGNATURE` or `X-PAYMENT`), and
reports the server's `PAYMENT-RESPONSE` to zpay, which checks it on chain. `max_amount`
(token units) caps this request: a resource asking more raises `X402AmountExceeded` and
nothing is held or signed. zpay's refusals raise as usual (`PaymentRefused` with `.code`,
e.g. `daily_limit`). One Idempotency-Key per call, reused by the SDK's retries: a retry
never pays twice.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx

from zpay.client._core import Call, _seg, amount_text
from zpay.client.errors import ZpayError

if TYPE_CHECKING:
    from zpay.client.aio import AsyncZpay
    from zpay.client.sync import Zpay

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
RESPONSE_HEADERS = ("PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE")
DEFAULT_TIMEOUT_S = 60.0


class X402Error(ZpayError):
    """The 402 could not be answered (no requirements in it, none zpay can pay, …)."""


class X402AmountExceeded(X402Error):
    """The resource asks more than the caller's `max_amount`: nothing was held or signed."""

    def __init__(self, detail: str, *, required: Decimal, max_amount: Decimal,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail, code="x402_max_amount_exceeded", status=422, body=body)
        self.required = required
        self.max_amount = max_amount


@dataclass(frozen=True, kw_only=True)
class X402Payment:
    """zpay's x402 payment: what was held and signed, and how it settled so far
    (`submitted` until the chain shows the transfer: then `succeeded`; `failed` once it
    provably never lands and the hold is released)."""

    id: str
    status: str
    amount: Decimal
    pay_to: str
    network: str
    chain: str
    settlement_tx: str | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> X402Payment:
        x = body.get("x402") or {}
        return cls(id=str(body["id"]), status=str(body["status"]),
                   amount=Decimal(str(body["amount"])), pay_to=str(x.get("pay_to", "")),
                   network=str(x.get("network", "")), chain=str(body.get("chain", "")),
                   settlement_tx=body.get("tx_id"), raw=dict(body))


@dataclass(frozen=True)
class X402Response:
    """The final answer of the resource, and zpay's payment (None when no 402 was met)."""

    response: httpx.Response
    payment: X402Payment | None


# ------------------------------------------------------------------ pure steps


def requirements_of(response: httpx.Response) -> str | dict[str, Any]:
    """The requirements exactly as received: the v2 header value, else the v1 JSON body."""
    header = response.headers.get(PAYMENT_REQUIRED)
    if header:
        return header
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("x402Version") in (1, 2) and "accepts" in body:
        return body
    raise X402Error("the 402 carries no x402 payment requirements",
                    code="x402_requirements_missing", status=402)


def _pay_call(session_key_id: str, required: str | dict[str, Any], max_amount: str,
              idempotency_key: str) -> Call[dict[str, Any]]:
    body = {"session_key_id": session_key_id, "payment_required": required,
            "max_amount": amount_text(max_amount)}
    return Call("POST", "/v1/x402/payments", dict, json=body,
                headers={"Idempotency-Key": idempotency_key}, idempotent=True,
                retry_codes=frozenset({"idempotency_request_in_flight"}))


def _report_call(payment_id: str, payment_response: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/v1/x402/payments/{_seg(payment_id)}/settlement", dict,
                json={"payment_response": payment_response}, idempotent=True)


def _settlement_header(response: httpx.Response) -> str | None:
    return next((response.headers[h] for h in RESPONSE_HEADERS if h in response.headers), None)


def _with_header(request_kwargs: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    headers = httpx.Headers(request_kwargs.get("headers"))
    headers[name] = value
    return {**request_kwargs, "headers": headers}


def _typed(exc: ZpayError) -> ZpayError:
    if exc.code == "x402_max_amount_exceeded":
        return X402AmountExceeded(exc.detail,
                                  required=Decimal(str(exc.body.get("required_amount", "0"))),
                                  max_amount=Decimal(str(exc.body.get("max_amount", "0"))),
                                  body=exc.body)
    return exc


# ------------------------------------------------------------------ sync and async


def fetch_with_payment(zpay: Zpay, url: str, *, session_key_id: str, max_amount: str,
                       method: str = "GET", http: httpx.Client | None = None,
                       **request_kwargs: Any) -> X402Response:
    """`http.request(method, url, **request_kwargs)`, paying a 402 through zpay."""
    client = http or httpx.Client(timeout=DEFAULT_TIMEOUT_S)
    try:
        first = client.request(method, url, **request_kwargs)
        if first.status_code != 402:
            return X402Response(first, None)
        call = _pay_call(session_key_id, requirements_of(first), max_amount,
                         f"zpay-x402-{uuid.uuid4()}")
        try:
            paid = zpay._send(call)
        except ZpayError as exc:
            raise _typed(exc) from None
        retried = client.request(method, url, **_with_header(
            request_kwargs, paid["header_name"], paid["header_value"]))
        settlement = _settlement_header(retried)
        if settlement is not None:
            with contextlib.suppress(ZpayError):  # zpay follows it on chain anyway
                paid = zpay._send(_report_call(paid["id"], settlement))
        return X402Response(retried, X402Payment.from_json(paid))
    finally:
        if http is None:
            client.close()


async def afetch_with_payment(zpay: AsyncZpay, url: str, *, session_key_id: str,
                              max_amount: str, method: str = "GET",
                              http: httpx.AsyncClient | None = None,
                              **request_kwargs: Any) -> X402Response:
    """`await http.request(method, url, **request_kwargs)`, paying a 402 through zpay."""
    client = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT_S)
    try:
        first = await client.request(method, url, **request_kwargs)
        if first.status_code != 402:
            return X402Response(first, None)
        call = _pay_call(session_key_id, requirements_of(first), max_amount,
                         f"zpay-x402-{uuid.uuid4()}")
        try:
            paid = await zpay._send(call)
        except ZpayError as exc:
            raise _typed(exc) from None
        retried = await client.request(method, url, **_with_header(
            request_kwargs, paid["header_name"], paid["header_value"]))
        settlement = _settlement_header(retried)
        if settlement is not None:
            with contextlib.suppress(ZpayError):  # zpay follows it on chain anyway
                paid = await zpay._send(_report_call(paid["id"], settlement))
        return X402Response(retried, X402Payment.from_json(paid))
    finally:
        if http is None:
            await client.aclose()
