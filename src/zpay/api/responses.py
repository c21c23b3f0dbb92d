"""Response bodies of the most used operations, as msgspec Structs.

They are the declared return types of the handlers, so the OpenAPI document describes each
response from the same definition; the services build the bodies (`zpay.services.views`),
and tests validate real responses against the document (tests/api/test_openapi.py), so the
two cannot drift apart unnoticed. Amounts are decimal strings in token units; timestamps
RFC 3339 strings in UTC. Fields a body carries only sometimes have defaults (not required).
Objects allow more properties than listed: a session key carries its pending approval's
wallet-facing fields, which differ per chain, at top level too.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Amount = Annotated[str, msgspec.Meta(description="decimal string in token units, e.g. \"12.5\"",
                                     examples=["12.5"])]
Timestamp = Annotated[str, msgspec.Meta(description="RFC 3339, UTC",
                                        examples=["2026-01-31T12:00:00Z"])]
Cursor = Annotated[str | None, msgspec.Meta(
    description="pass as `starting_after` for the next page; null on the last page")]


class Out(msgspec.Struct, kw_only=True):
    pass


class ListOf(Out, kw_only=True):
    """A page of a list operation; each subclass narrows `data` to its item type (the
    field keeps its place, so every list schema reads object, data, has_more, next_cursor)."""

    object: str = "list"
    data: list[Any]
    has_more: bool
    next_cursor: Cursor = None


class Problem(Out, kw_only=True):
    """RFC 9457 problem details, with zpay's stable `code`."""

    type: str
    title: str
    status: int
    code: Annotated[str, msgspec.Meta(description="stable machine code (docs/errors.md)")]
    detail: str
    request_id: Annotated[str | None, msgspec.Meta(
        description="the request's X-Request-Id")] = None


# ---------------------------------------------------------------- agents

class Agent(Out, kw_only=True):
    id: str
    object: str = "agent"
    name: str
    status: Annotated[str, msgspec.Meta(examples=["active"],
                                        description="active | frozen | deleted")]
    token_hint: str
    token_expires_at: Timestamp | None = None
    created_at: Timestamp
    updated_at: Timestamp
    token: Annotated[str | None, msgspec.Meta(
        description="the agent token, only on create and rotate-token: shown once")] = None
    deleted: bool | None = None


class AgentList(ListOf, kw_only=True):
    data: list[Agent]


# ---------------------------------------------------------------- merchant API keys

class ApiKey(Out, kw_only=True):
    id: str
    object: str = "api_key"
    name: str | None = None
    hint: Annotated[str, msgspec.Meta(description="prefix and last four characters")]
    status: Annotated[str, msgspec.Meta(description="active | expired | revoked")]
    created_at: Timestamp
    expires_at: Timestamp | None = None
    revoked_at: Timestamp | None = None
    secret: Annotated[str | None, msgspec.Meta(
        description="the secret key, only on create and roll: shown once")] = None


class RolledApiKey(ApiKey, kw_only=True):
    rolled_from: ApiKey


class ApiKeyList(ListOf, kw_only=True):
    data: list[ApiKey]


# ---------------------------------------------------------------- policy sessions

class PolicySession(Out, kw_only=True):
    id: str
    object: str = "session"
    status: Annotated[str, msgspec.Meta(description="active | expired | revoked")]
    agent_id: str
    user_wallet: str | None = None
    token: Annotated[str, msgspec.Meta(description="the token symbol limits count in")]
    max_per_transaction: Amount | None = None
    max_per_day: Amount | None = None
    max_per_week: Amount | None = None
    max_per_month: Amount | None = None
    max_total: Amount | None = None
    allowed_recipients: list[str] | None = None
    allowed_chains: list[str] | None = None
    allowed_methods: list[str] | None = None
    active_hours: list[int] | None = None
    window_mode: str
    timezone: str
    total_committed: Amount
    expires_at: Timestamp | None = None
    created_at: Timestamp
    revoked_at: Timestamp | None = None
    windows: Annotated[dict[str, Any] | None, msgspec.Meta(
        description="usage per window and what frees up when (get, create, revoke)")] = None
    access_token: Annotated[str | None, msgspec.Meta(
        description="the `as_` session token, only on create: shown once")] = None


class PolicySessionList(ListOf, kw_only=True):
    data: list[PolicySession]


# ---------------------------------------------------------------- session keys

class KeySecurity(Out, kw_only=True):
    last_activity: Timestamp | None = None
    revoked_at: Timestamp | None = None
    custody: str


class Approval(Out, kw_only=True):
    """What the user's wallet signs (chain-specific fields follow `tx_id`)."""

    id: str
    object: str = "approval"
    kind: Annotated[str, msgspec.Meta(description="funding | top_up")]
    status: str
    method: str | None = None
    expires_at: Timestamp | None = None
    tx_id: str | None = None


class SessionKey(Out, kw_only=True):
    id: str
    object: str = "session_key"
    status: Annotated[str, msgspec.Meta(
        description="pending_approval | active | exhausted | expired | revoked")]
    chain: str
    token: str
    token_address: str
    decimals: int
    agent_id: str
    user_wallet: str
    session_key_address: str
    max_amount: Amount
    funded_amount: Amount
    spent_amount: Amount
    held_amount: Amount
    remaining_amount: Amount
    refunded_amount: Amount
    transaction_count: int
    linked_session_id: str | None = None
    refund_on_close: bool
    refund_status: str | None = None
    expires_at: Timestamp
    created_at: Timestamp
    security: KeySecurity
    approval: Approval | None = None


class SessionKeyList(ListOf, kw_only=True):
    data: list[SessionKey]


class Affordability(Out, kw_only=True):
    object: str = "can_afford"
    session_key_id: str
    amount: Amount
    allowed: bool
    reason: Annotated[str, msgspec.Meta(description="`approved` or the refusal's code")]
    effective_limit: Amount | None = None
    session_key_remaining: Amount | None = None
    session_remaining_today: Amount | None = None
    session_remaining_week: Amount | None = None
    session_remaining_month: Amount | None = None
    linked_session_id: str | None = None


class PaymentAttempt(Out, kw_only=True):
    id: str
    object: str = "payment_attempt"
    session_key_id: str
    agent_id: str | None = None
    amount: Amount | None = None
    recipient: str | None = None
    allowed: bool
    reason: str
    payment_id: str | None = None
    created_at: Timestamp


class PaymentAttemptList(ListOf, kw_only=True):
    data: list[PaymentAttempt]


# ---------------------------------------------------------------- payments

class Payment(Out, kw_only=True):
    id: str
    object: str = "payment"
    status: Annotated[str, msgspec.Meta(
        description="succeeded (201) | submitted (202, settled later from the chain); "
                    "a payment that ended failed is answered 402")]
    session_key_id: str
    agent_id: str | None = None
    chain: str
    token: str
    amount: Amount
    recipient: str
    description: str | None = None
    tx_id: str | None = None
    failure_code: str | None = None
    linked_session_id: str | None = None
    created_at: Timestamp
    updated_at: Timestamp


class PaymentList(ListOf, kw_only=True):
    data: list[Payment]
