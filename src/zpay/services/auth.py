"""Who is calling: a merchant (secret key), an agent (agent token) or a policy session token."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select

from zpay.domain import tokens
from zpay.domain.errors import Forbidden, Unauthorized
from zpay.services.context import AppContext
from zpay.services.credential_cache import cache_of
from zpay.store.direct import Executor
from zpay.store.models import Agent, ApiKey, PolicySession

_API_KEYS, _AGENTS, _POLICIES = (m.__table__ for m in (ApiKey, Agent, PolicySession))
# Built once: each call only binds the token's hash (store.direct).
_API_KEY_BY_HASH = select(_API_KEYS.c.merchant_id, _API_KEYS.c.revoked_at,
                          _API_KEYS.c.expires_at).where(_API_KEYS.c.token_hash == bindparam("h"))
_AGENT_BY_HASH = select(_AGENTS.c.id, _AGENTS.c.merchant_id, _AGENTS.c.status,
                        _AGENTS.c.token_expires_at).where(_AGENTS.c.token_hash == bindparam("h"))
_POLICY_BY_HASH = select(
    _POLICIES.c.id, _POLICIES.c.merchant_id, _POLICIES.c.agent_id, _POLICIES.c.status,
    _POLICIES.c.expires_at, _AGENTS.c.status.label("agent_status"),
).join(_AGENTS, _AGENTS.c.id == _POLICIES.c.agent_id).where(
    _POLICIES.c.token_hash == bindparam("h"))


class Role(enum.StrEnum):
    MERCHANT = "merchant"
    AGENT = "agent"


@dataclass(frozen=True)
class Principal:
    merchant_id: str
    role: Role
    agent_id: str | None = None
    policy_session_id: str | None = None  # set when an `as_` session token is used

    @property
    def scope(self) -> str:
        """Who acts, for what is theirs alone (Idempotency-Keys): a session token, an agent,
        or the merchant acting as itself."""
        if self.policy_session_id is not None:
            return f"session:{self.policy_session_id}"
        if self.agent_id is not None:
            return f"agent:{self.agent_id}"
        return "merchant"

    def require_merchant(self, action: str) -> None:
        if self.role is not Role.MERCHANT:
            raise Forbidden(f"an agent token cannot {action}; use the merchant's secret key",
                            code="merchant_key_required")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None for any other."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(ctx: AppContext, authorization: str | None) -> Principal:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <token> header",
                           code="missing_credentials")
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("use Authorization: Bearer <token>", code="invalid_credentials")
    kind = tokens.parse_kind(token)
    if kind is None:  # refused before any database lookup
        raise Unauthorized("malformed token", code="invalid_credentials")
    digest = tokens.token_hash(token)
    now = ctx.now()
    cache = cache_of(ctx.db)
    principal = cache.get(digest, now)
    if principal is not None:
        return principal
    generation = cache.generation
    # One indexed read of the columns that decide.
    async with ctx.db.hot_reads() as x:
        principal, valid_until = await _look_up(x, kind, digest, now)
    cache.put(digest, principal, valid_until, generation)
    return principal


async def _look_up(x: Executor, kind: str, digest: str,
                   now: datetime) -> tuple[Principal, datetime | None]:
    """The principal of a token's hash, and when its credential expires by itself."""
    if kind == "sk":
        key = (await x.execute(_API_KEY_BY_HASH, {"h": digest})).first()
        if key is None or key.revoked_at is not None:
            raise Unauthorized("unknown or revoked API key", code="invalid_credentials")
        if key.expires_at is not None and now >= key.expires_at:  # rolled
            raise Unauthorized("this API key has expired", code="token_expired")
        return Principal(key.merchant_id, Role.MERCHANT), key.expires_at
    if kind == "agent":
        agent = (await x.execute(_AGENT_BY_HASH, {"h": digest})).first()
        if agent is None or agent.status == "deleted":
            raise Unauthorized("unknown agent token", code="invalid_credentials")
        if agent.status == "frozen":
            raise Unauthorized("this agent is frozen", code="agent_frozen")
        if agent.token_expires_at is not None and now >= agent.token_expires_at:
            raise Unauthorized("this agent token has expired; rotate it",
                               code="token_expired")
        return (Principal(agent.merchant_id, Role.AGENT, agent_id=agent.id),
                agent.token_expires_at)
    policy = (await x.execute(_POLICY_BY_HASH, {"h": digest})).first()
    if policy is None:
        raise Unauthorized("unknown session token", code="invalid_credentials")
    if policy.status != "active" or (policy.expires_at is not None and now >= policy.expires_at):
        raise Unauthorized("this session is no longer active", code="session_not_active")
    if policy.agent_status != "active":
        raise Unauthorized("this agent is frozen", code="agent_frozen")
    return (Principal(policy.merchant_id, Role.AGENT, agent_id=policy.agent_id,
                      policy_session_id=policy.id), policy.expires_at)
