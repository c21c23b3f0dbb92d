"""Who is calling: a merchant (secret key), an agent (agent token) or a policy session token."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import select

from zpay.domain import tokens
from zpay.domain.errors import Forbidden, Unauthorized
from zpay.services.context import AppContext
from zpay.store.models import Agent, ApiKey, PolicySession


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


def forget_credentials(token_hash: str) -> None:
    """Called when a credential stops being valid before its natural end (an API key
    revoked or rolled): whatever remembers authentications must drop this token hash, so
    the next call with it is refused. Nothing is remembered today: every call reads the
    database."""
    del token_hash


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
    async with ctx.db.sessions() as s:
        if kind == "sk":
            key = (await s.execute(select(ApiKey).where(ApiKey.token_hash == digest))).scalar()
            if key is None or key.revoked_at is not None:
                raise Unauthorized("unknown or revoked API key", code="invalid_credentials")
            if key.expires_at is not None and ctx.now() >= key.expires_at:  # rolled
                raise Unauthorized("this API key has expired", code="token_expired")
            return Principal(key.merchant_id, Role.MERCHANT)
        if kind == "agent":
            agent = (await s.execute(select(Agent).where(Agent.token_hash == digest))).scalar()
            if agent is None or agent.status == "deleted":
                raise Unauthorized("unknown agent token", code="invalid_credentials")
            if agent.status == "frozen":
                raise Unauthorized("this agent is frozen", code="agent_frozen")
            if agent.token_expires_at is not None and ctx.now() >= agent.token_expires_at:
                raise Unauthorized("this agent token has expired; rotate it",
                                   code="token_expired")
            return Principal(agent.merchant_id, Role.AGENT, agent_id=agent.id)
        policy = (
            await s.execute(select(PolicySession).where(PolicySession.token_hash == digest))
        ).scalar()
        if policy is None:
            raise Unauthorized("unknown session token", code="invalid_credentials")
        if policy.status != "active" or (
            policy.expires_at is not None and ctx.now() >= policy.expires_at
        ):
            raise Unauthorized("this session is no longer active", code="session_not_active")
        agent = await s.get(Agent, policy.agent_id)
        if agent is None or agent.status != "active":
            raise Unauthorized("this agent is frozen", code="agent_frozen")
        return Principal(policy.merchant_id, Role.AGENT, agent_id=policy.agent_id,
                         policy_session_id=policy.id)
