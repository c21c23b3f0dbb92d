"""Typed results. Amounts are `Decimal` in token units (never float); timestamps are aware
`datetime`s. Every result keeps the server's JSON in `raw`, so fields added later are
still reachable and an approval can be handed to a wallet as issued."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar, Union

R = TypeVar("R", bound="Resource")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Resource:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        prepared = cls._prepare(dict(data))
        values: dict[str, Any] = {}
        for name, hint in _hints(cls).items():
            if name == "raw" or name not in prepared:
                continue
            values[name] = _convert(hint, prepared[name])
        return cls(raw=dict(data), **values)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for the few places where the wire shape differs from the typed one."""
        return data


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        names = {f.name for f in dataclasses.fields(cls)}
        hints = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
        _HINTS[cls] = hints
    return hints


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_convert(item, v) for v in value]
    if hint is Decimal:
        if isinstance(value, float):  # parse_float=Decimal keeps this from ever happening
            raise TypeError("a float amount reached the SDK")
        return Decimal(str(value))
    if hint is datetime:
        return datetime.fromisoformat(value)
    if isinstance(hint, type) and issubclass(hint, Resource):
        return hint.from_json(value)
    return value


@dataclass(frozen=True, kw_only=True)
class Agent(Resource):
    id: str
    name: str
    status: str
    token_hint: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    token: str | None = None  # only on create and rotate_token: shown once
    token_expires_at: datetime | None = None  # None: the token does not expire
    deleted: bool = False


@dataclass(frozen=True, kw_only=True)
class ApiKey(Resource):
    """A merchant secret key: `hint` only, `secret` once (on create and roll)."""

    id: str
    status: str  # active | expired | revoked
    hint: str
    name: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None  # set on the old key when rolled with an overlap
    revoked_at: datetime | None = None
    secret: str | None = None  # shown once


@dataclass(frozen=True, kw_only=True)
class PolicySession(Resource):
    id: str
    status: str
    agent_id: str
    user_wallet: str | None = None
    token: str | None = None  # the token symbol the limits count in, e.g. "USDC"
    access_token: str | None = None  # the `as_` session token, only on create: shown once
    max_per_transaction: Decimal | None = None
    max_per_day: Decimal | None = None
    max_per_week: Decimal | None = None
    max_per_month: Decimal | None = None
    max_total: Decimal | None = None
    allowed_recipients: list[str] | None = None
    allowed_chains: list[str] | None = None
    allowed_methods: list[str] | None = None
    active_hours: list[int] | None = None
    window_mode: str | None = None
    timezone: str | None = None
    total_committed: Decimal | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    windows: dict[str, Any] | None = None  # per-window use; amounts inside are decimal strings
    linked_session_key_ids: list[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Approval(Resource):
    """What the user signs: a funding approval, or a top-up (`kind == "top_up"`). The
    wallet-facing payload (Solana `approval_transaction`, EVM `typed_data` or
    `unsigned_transaction`) is in `raw`; pass the whole object to a wallet helper."""

    id: str
    kind: str
    status: str
    method: str | None = None
    expires_at: datetime | None = None
    tx_id: str | None = None
    session_key_id: str | None = None  # top-ups
    amount: Decimal | None = None  # top-ups
    approval_url: str | None = None  # the hosted page where the user reviews and signs it


@dataclass(frozen=True, kw_only=True)
class SessionKey(Resource):
    id: str
    status: str
    chain: str
    token: str
    agent_id: str
    user_wallet: str
    session_key_address: str
    max_amount: Decimal
    funded_amount: Decimal
    spent_amount: Decimal
    held_amount: Decimal
    remaining_amount: Decimal
    refunded_amount: Decimal
    token_address: str | None = None
    decimals: int | None = None
    transaction_count: int = 0
    linked_session_id: str | None = None
    refund_on_close: bool = True
    refund_status: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    security: dict[str, Any] | None = None
    approval: Approval | None = None  # while pending_approval: what the user must sign
    approval_url: str | None = None  # while pending_approval: the page the user signs it on


@dataclass(frozen=True, kw_only=True)
class Payment(Resource):
    id: str
    status: str  # authorized | submitted | succeeded | failed
    session_key_id: str
    amount: Decimal
    recipient: str
    agent_id: str | None = None
    chain: str | None = None
    token: str | None = None
    description: str | None = None
    tx_id: str | None = None
    failure_code: str | None = None
    linked_session_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Set by the SDK, not the server: the key this payment was created with, and whether
    # the answer was a replay of an earlier identical request.
    idempotency_key: str | None = None
    replayed: bool = False


@dataclass(frozen=True, kw_only=True)
class PaymentAttempt(Resource):
    id: str
    session_key_id: str
    amount: Decimal
    allowed: bool
    reason: str
    agent_id: str | None = None
    recipient: str | None = None
    payment_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Affordability(Resource):
    """`can_afford`: the authorization check without a hold."""

    session_key_id: str
    amount: Decimal
    allowed: bool
    reason: str
    effective_limit: Decimal | None = None
    session_key_remaining: Decimal | None = None
    session_remaining_today: Decimal | None = None
    session_remaining_week: Decimal | None = None
    session_remaining_month: Decimal | None = None
    linked_session_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Event(Resource):
    id: str
    type: str
    object_type: str | None = None
    object_id: str | None = None
    data: dict[str, Any] | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookEndpoint(Resource):
    id: str
    url: str
    enabled: bool
    description: str | None = None
    event_types: list[str] | None = None  # None: every event type
    disabled_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    secret: str | None = None  # only on create: shown once
    deleted: bool = False


@dataclass(frozen=True, kw_only=True)
class WebhookAttempt(Resource):
    attempt: int
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookDelivery(Resource):
    id: str
    endpoint_id: str
    event_id: str
    status: str
    attempt_count: int = 0
    event_type: str | None = None
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    attempts: list[WebhookAttempt] | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class FaucetDrip(Resource):
    chain: str
    wallet: str
    amount: Decimal
    balance: Decimal
    tx_id: str | None = None


@dataclass(frozen=True)
class ListPage(Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None
