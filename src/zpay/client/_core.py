"""What the sync and async clients share: requests are BUILT here as plain `Call` values
and answers are parsed and classified here; `sync.py` and `aio.py` only send them. So the
two clients cannot drift apart, and the retry rules are tested without a network."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from zpay.client.errors import APIConnectionError, ZpayError, error_for
from zpay.client.types import (
    Affordability,
    Agent,
    ApiKey,
    Approval,
    Event,
    FaucetDrip,
    ListPage,
    Payment,
    PaymentAttempt,
    PolicySession,
    Resource,
    SessionKey,
    WebhookDelivery,
    WebhookEndpoint,
)

T = TypeVar("T")
R = TypeVar("R", bound=Resource)

DEFAULT_URL = "http://127.0.0.1:8000"
# Payments and approvals wait for chain confirmation inside the request (30 s by default
# on the server), so the read timeout must be longer than that.
DEFAULT_TIMEOUT_S = 90.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
BACKOFF_CAP_S = 8.0
RETRY_AFTER_CAP_S = 30.0
USER_AGENT = "zpay-python/0.1.0"

Amount = str | Decimal | int
Signed = Mapping[str, Any]


class SessionLimits(TypedDict, total=False):
    """The keywords of `sessions.create` after `agent_id` (for `agents.create_session`)."""

    user_wallet: str | None
    token: str | None
    max_per_transaction: Amount | None
    max_per_day: Amount | None
    max_per_week: Amount | None
    max_per_month: Amount | None
    max_total: Amount | None
    allowed_recipients: list[str] | None
    allowed_chains: list[str] | None
    allowed_methods: list[str] | None
    active_hours: list[int] | None
    window_mode: str | None
    timezone: str | None
    expires_at: datetime | None
    expires_in_seconds: int | None


class _Unset:
    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()
"""Marks "leave unchanged" in updates, where None means "clear"."""


def settings_from_env(api_key: str | None, base_url: str | None) -> tuple[str | None, str]:
    key = api_key if api_key is not None else os.environ.get("ZPAY_API_KEY") or None
    url = base_url or os.environ.get("ZPAY_URL") or DEFAULT_URL
    return key, url.rstrip("/")


def headers_for(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def amount_text(value: Amount) -> str:
    """Decimal strings for the API. Floats are refused: 0.1 + 0.2 is not money."""
    if isinstance(value, (bool, float)):
        raise TypeError("amounts must be str, Decimal or int, never float")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite amount: {value}")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise TypeError(f"unsupported amount type {type(value).__name__}")


def _seg(value: str) -> str:
    # Ids go into paths; quoting keeps a hostile id from becoming another route ("../").
    if not value:
        raise ValueError("an id is required")
    return quote(value, safe="")


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("datetimes sent to zpay need a timezone")
    return value.isoformat()


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # May be re-sent after it possibly reached the server (a read timeout, a dropped
    # connection): true for reads and for operations the server makes idempotent.
    idempotent: bool = False
    # Problem codes that mean "ask again shortly" for this call.
    retry_codes: frozenset[str] = frozenset()


PageCall = Callable[[str | None], "Call[ListPage[T]]"]


def _parse_page(item: Callable[[Any], T]) -> Callable[[Any], ListPage[T]]:
    def parse(body: Any) -> ListPage[T]:
        return ListPage(data=[item(d) for d in body.get("data", [])],
                        has_more=bool(body.get("has_more")),
                        next_cursor=body.get("next_cursor"))
    return parse


def list_call(path: str, item: Callable[[Any], T], limit: int | None,
              **filters: Any) -> PageCall[T]:
    def build(cursor: str | None) -> Call[ListPage[T]]:
        params = _drop_none({**filters, "limit": limit, "starting_after": cursor})
        return Call("GET", path, _parse_page(item), params=params, idempotent=True)
    return build


def get(path: str, parse: Callable[[Any], T], **params: Any) -> Call[T]:
    return Call("GET", path, parse, params=_drop_none(params) or None, idempotent=True)


def post(path: str, parse: Callable[[Any], T], body: Mapping[str, Any] | None = None, *,
         idempotent: bool = False, retry_codes: Iterable[str] = ()) -> Call[T]:
    return Call("POST", path, parse, json=dict(body or {}), idempotent=idempotent,
                retry_codes=frozenset(retry_codes))


def delete(path: str, parse: Callable[[Any], T]) -> Call[T]:
    return Call("DELETE", path, parse, idempotent=True)


def _payment_parse(key: str) -> Callable[[Any], Payment]:
    def parse(body: Any) -> Payment:
        return dataclasses.replace(Payment.from_json(body), idempotency_key=key)
    return parse


# ------------------------------------------------------------------ the operations


class Ops:
    """Every API operation as a pure `Call` builder."""

    # agents
    @staticmethod
    def create_agent(name: str, expires_in_seconds: int | None = None) -> Call[Agent]:
        return post("/v1/agents", Agent.from_json,
                    _drop_none({"name": name, "expires_in_seconds": expires_in_seconds}))

    @staticmethod
    def get_agent(agent_id: str) -> Call[Agent]:
        return get(f"/v1/agents/{_seg(agent_id)}", Agent.from_json)

    @staticmethod
    def list_agents(limit: int | None) -> PageCall[Agent]:
        return list_call("/v1/agents", Agent.from_json, limit)

    @staticmethod
    def rotate_agent_token(agent_id: str, expires_in_seconds: int | None = None) -> Call[Agent]:
        # Not idempotent: a lost answer would leave a rotated token nobody has seen.
        return post(f"/v1/agents/{_seg(agent_id)}/rotate-token", Agent.from_json,
                    _drop_none({"expires_in_seconds": expires_in_seconds}))

    # merchant secret keys
    @staticmethod
    def create_api_key(name: str | None) -> Call[ApiKey]:
        return post("/v1/api-keys", ApiKey.from_json, _drop_none({"name": name}))

    @staticmethod
    def get_api_key(key_id: str) -> Call[ApiKey]:
        return get(f"/v1/api-keys/{_seg(key_id)}", ApiKey.from_json)

    @staticmethod
    def list_api_keys(limit: int | None) -> PageCall[ApiKey]:
        return list_call("/v1/api-keys", ApiKey.from_json, limit)

    @staticmethod
    def revoke_api_key(key_id: str) -> Call[ApiKey]:
        return post(f"/v1/api-keys/{_seg(key_id)}/revoke", ApiKey.from_json, idempotent=True)

    @staticmethod
    def roll_api_key(key_id: str, overlap_seconds: int | None) -> Call[ApiKey]:
        # Not idempotent: a lost answer would leave a new key nobody has seen.
        return post(f"/v1/api-keys/{_seg(key_id)}/roll", ApiKey.from_json,
                    _drop_none({"overlap_seconds": overlap_seconds}))

    @staticmethod
    def freeze_agent(agent_id: str, frozen: bool) -> Call[Agent]:
        action = "freeze" if frozen else "unfreeze"
        return post(f"/v1/agents/{_seg(agent_id)}/{action}", Agent.from_json, idempotent=True)

    @staticmethod
    def delete_agent(agent_id: str) -> Call[Agent]:
        return delete(f"/v1/agents/{_seg(agent_id)}", Agent.from_json)

    # policy sessions
    @staticmethod
    def create_session(agent_id: str, *, user_wallet: str | None = None,
                       token: str | None = None,
                       max_per_transaction: Amount | None = None,
                       max_per_day: Amount | None = None, max_per_week: Amount | None = None,
                       max_per_month: Amount | None = None, max_total: Amount | None = None,
                       allowed_recipients: list[str] | None = None,
                       allowed_chains: list[str] | None = None,
                       allowed_methods: list[str] | None = None,
                       active_hours: list[int] | None = None, window_mode: str | None = None,
                       timezone: str | None = None, expires_at: datetime | None = None,
                       expires_in_seconds: int | None = None) -> Call[PolicySession]:
        limits = {"max_per_transaction": max_per_transaction, "max_per_day": max_per_day,
                  "max_per_week": max_per_week, "max_per_month": max_per_month,
                  "max_total": max_total}
        body = _drop_none({
            "agent_id": agent_id, "user_wallet": user_wallet, "token": token,
            **{k: amount_text(v) for k, v in limits.items() if v is not None},
            "allowed_recipients": allowed_recipients, "allowed_chains": allowed_chains,
            "allowed_methods": allowed_methods, "active_hours": active_hours,
            "window_mode": window_mode, "timezone": timezone, "expires_at": _iso(expires_at),
            "expires_in_seconds": expires_in_seconds})
        return post("/v1/sessions", PolicySession.from_json, body)

    @staticmethod
    def get_session(session_id: str) -> Call[PolicySession]:
        return get(f"/v1/sessions/{_seg(session_id)}", PolicySession.from_json)

    @staticmethod
    def list_sessions(agent_id: str | None, limit: int | None) -> PageCall[PolicySession]:
        return list_call("/v1/sessions", PolicySession.from_json, limit, agent_id=agent_id)

    @staticmethod
    def revoke_session(session_id: str) -> Call[PolicySession]:
        return post(f"/v1/sessions/{_seg(session_id)}/revoke", PolicySession.from_json)

    # session keys
    @staticmethod
    def create_session_key(agent_id: str, user_wallet: str, max_amount: Amount, *,
                           expires_in_seconds: int | None = None,
                           expires_at: datetime | None = None, chain: str | None = None,
                           token: str | None = None, session_id: str | None = None,
                           refund_on_close: bool | None = None,
                           approval_method: str | None = None) -> Call[SessionKey]:
        body = _drop_none({
            "agent_id": agent_id, "user_wallet": user_wallet,
            "max_amount": amount_text(max_amount), "expires_in_seconds": expires_in_seconds,
            "expires_at": _iso(expires_at), "chain": chain, "token": token,
            "session_id": session_id, "refund_on_close": refund_on_close,
            "approval_method": approval_method})
        return post("/v1/session-keys", SessionKey.from_json, body)

    @staticmethod
    def submit_approval(key_id: str, signed: Signed) -> Call[SessionKey]:
        # The server funds at most once and answers a repeat of the same signed approval
        # with the key's status, so a resend after a lost answer is safe.
        return post(f"/v1/session-keys/{_seg(key_id)}/approval", SessionKey.from_json,
                    dict(signed), idempotent=True, retry_codes=("approval_in_flight",))

    @staticmethod
    def renew_approval(key_id: str) -> Call[Approval]:
        return post(f"/v1/session-keys/{_seg(key_id)}/approval/renew", Approval.from_json)

    @staticmethod
    def get_session_key(key_id: str) -> Call[SessionKey]:
        return get(f"/v1/session-keys/{_seg(key_id)}", SessionKey.from_json)

    @staticmethod
    def list_session_keys(status: str | None, agent_id: str | None,
                          limit: int | None) -> PageCall[SessionKey]:
        return list_call("/v1/session-keys", SessionKey.from_json, limit, status=status,
                         agent_id=agent_id)

    @staticmethod
    def top_up(key_id: str, amount: Amount,
               approval_method: str | None = None) -> Call[Approval]:
        body = _drop_none({"amount": amount_text(amount), "approval_method": approval_method})
        return post(f"/v1/session-keys/{_seg(key_id)}/top-ups", Approval.from_json, body)

    @staticmethod
    def submit_top_up(key_id: str, top_up_id: str, signed: Signed) -> Call[SessionKey]:
        return post(f"/v1/session-keys/{_seg(key_id)}/top-ups/{_seg(top_up_id)}/approval",
                    SessionKey.from_json, dict(signed), idempotent=True,
                    retry_codes=("approval_in_flight",))

    @staticmethod
    def renew_top_up(key_id: str, top_up_id: str) -> Call[Approval]:
        return post(f"/v1/session-keys/{_seg(key_id)}/top-ups/{_seg(top_up_id)}/renew",
                    Approval.from_json)

    @staticmethod
    def revoke_session_key(key_id: str) -> Call[SessionKey]:
        return post(f"/v1/session-keys/{_seg(key_id)}/revoke", SessionKey.from_json)

    @staticmethod
    def link_session(key_id: str, session_id: str) -> Call[SessionKey]:
        return post(f"/v1/session-keys/{_seg(key_id)}/link", SessionKey.from_json,
                    {"session_id": session_id}, idempotent=True)

    @staticmethod
    def unlink_session(key_id: str) -> Call[SessionKey]:
        return delete(f"/v1/session-keys/{_seg(key_id)}/link", SessionKey.from_json)

    @staticmethod
    def can_afford(key_id: str, amount: Amount,
                   recipient: str | None = None) -> Call[Affordability]:
        return get(f"/v1/session-keys/{_seg(key_id)}/can-afford", Affordability.from_json,
                   amount=amount_text(amount), recipient=recipient)

    @staticmethod
    def list_attempts(key_id: str, limit: int | None) -> PageCall[PaymentAttempt]:
        return list_call(f"/v1/session-keys/{_seg(key_id)}/attempts", PaymentAttempt.from_json,
                         limit)

    # payments
    @staticmethod
    def create_payment(session_key_id: str, amount: Amount, recipient: str, *,
                       description: str | None = None,
                       idempotency_key: str | None = None) -> Call[Payment]:
        # One key per logical payment, generated BEFORE the first send and reused by every
        # retry of this call: the server answers a repeat with the first outcome.
        key = idempotency_key or f"zpay-py-{uuid.uuid4()}"
        body = _drop_none({"session_key_id": session_key_id, "amount": amount_text(amount),
                           "recipient": recipient, "description": description})
        return Call("POST", "/v1/payments", _payment_parse(key), json=body,
                    headers={"Idempotency-Key": key}, idempotent=True,
                    retry_codes=frozenset({"idempotency_request_in_flight"}))

    @staticmethod
    def get_payment(payment_id: str) -> Call[Payment]:
        return get(f"/v1/payments/{_seg(payment_id)}", Payment.from_json)

    @staticmethod
    def list_payments(session_key_id: str | None, limit: int | None) -> PageCall[Payment]:
        return list_call("/v1/payments", Payment.from_json, limit, session_key_id=session_key_id)

    # webhooks
    @staticmethod
    def create_endpoint(url: str, *, event_types: list[str] | None = None,
                        description: str | None = None,
                        enabled: bool = True) -> Call[WebhookEndpoint]:
        body = _drop_none({"url": url, "event_types": event_types, "description": description,
                           "enabled": enabled})
        return post("/v1/webhook-endpoints", WebhookEndpoint.from_json, body)

    @staticmethod
    def list_endpoints(limit: int | None) -> PageCall[WebhookEndpoint]:
        return list_call("/v1/webhook-endpoints", WebhookEndpoint.from_json, limit)

    @staticmethod
    def get_endpoint(endpoint_id: str) -> Call[WebhookEndpoint]:
        return get(f"/v1/webhook-endpoints/{_seg(endpoint_id)}", WebhookEndpoint.from_json)

    @staticmethod
    def update_endpoint(endpoint_id: str, *, url: Any = UNSET, description: Any = UNSET,
                        event_types: Any = UNSET, enabled: Any = UNSET) -> Call[WebhookEndpoint]:
        changes = {k: v for k, v in {"url": url, "description": description,
                                     "event_types": event_types, "enabled": enabled}.items()
                   if v is not UNSET}
        return Call("PATCH", f"/v1/webhook-endpoints/{_seg(endpoint_id)}",
                    WebhookEndpoint.from_json, json=changes, idempotent=True)

    @staticmethod
    def delete_endpoint(endpoint_id: str) -> Call[WebhookEndpoint]:
        return delete(f"/v1/webhook-endpoints/{_seg(endpoint_id)}", WebhookEndpoint.from_json)

    @staticmethod
    def list_deliveries(endpoint_id: str, status: str | None,
                        limit: int | None) -> PageCall[WebhookDelivery]:
        return list_call(f"/v1/webhook-endpoints/{_seg(endpoint_id)}/deliveries",
                         WebhookDelivery.from_json, limit, status=status)

    @staticmethod
    def get_delivery(delivery_id: str) -> Call[WebhookDelivery]:
        return get(f"/v1/webhook-deliveries/{_seg(delivery_id)}", WebhookDelivery.from_json)

    @staticmethod
    def redeliver(delivery_id: str) -> Call[WebhookDelivery]:
        return post(f"/v1/webhook-deliveries/{_seg(delivery_id)}/redeliver",
                    WebhookDelivery.from_json)

    # events, faucet, health
    @staticmethod
    def list_events(type: str | None, object_id: str | None,
                    limit: int | None) -> PageCall[Event]:
        return list_call("/v1/events", Event.from_json, limit, type=type, object_id=object_id)

    @staticmethod
    def drip(wallet: str, amount: Amount, *, chain: str | None = None,
             token: str | None = None) -> Call[FaucetDrip]:
        body = _drop_none({"wallet": wallet, "amount": amount_text(amount), "chain": chain,
                           "token": token})
        return post("/v1/faucet", FaucetDrip.from_json, body)

    @staticmethod
    def health() -> Call[bool]:
        return get("/health", lambda body: body.get("status") == "ok")


# ------------------------------------------------------------ answers and retries

PAYMENT_FINAL = frozenset({"succeeded", "failed"})
REFUND_FINAL = frozenset({"done", "skipped"})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_s(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), RETRY_AFTER_CAP_S)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        base = min(BACKOFF_CAP_S, self.backoff_s * 2**attempt)
        return base * (0.5 + self.rng.random() / 2)  # jitter: replicas don't retry in step

    def retry_exception(self, call: Call[Any], exc: httpx.TransportError, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        # These fail before a byte was sent: repeating cannot do anything twice.
        unsent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
        return isinstance(exc, unsent) or call.idempotent

    def retry_response(self, call: Call[Any], response: httpx.Response, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        if response.headers.get("Idempotent-Replayed") == "true":
            return False  # a stored answer: asking again returns the same one
        if response.status_code == 503:
            return True
        if response.status_code == 409 and call.retry_codes:
            return problem_code(response) in call.retry_codes
        return False


def decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    # parse_float: money never passes through a binary float, even in a surprise field.
    return json.loads(response.content, parse_float=Decimal)


def problem_code(response: httpx.Response) -> str | None:
    try:
        body = decode(response)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def result(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or the typed error it stands for."""
    try:
        body = decode(response)
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_for(response.status_code, body, response.text[:500])
    if body is None:
        raise ZpayError("the server answered without a JSON body", code="invalid_response",
                        status=response.status_code)
    parsed = call.parse(body)
    if isinstance(parsed, Payment) and response.headers.get("Idempotent-Replayed") == "true":
        parsed = dataclasses.replace(parsed, replayed=True)
    return parsed


def connection_error(call: Call[Any], exc: httpx.TransportError) -> APIConnectionError:
    return APIConnectionError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}",
                              code="connection_error")
