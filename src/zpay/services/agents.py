"""Agents and their tokens: create (shown once), rotate, freeze/unfreeze, delete."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.domain import tokens
from zpay.domain.errors import Conflict, InvalidRequest, NotFound
from zpay.domain.lifecycle import KeyStatus, SessionStatus, is_live, transition
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page, page_body
from zpay.services.tenancy import fetch_owned
from zpay.services.views import agent_view, policy_session_view, session_key_view
from zpay.store.ids import new_id
from zpay.store.models import Agent, Merchant, PolicySession, SessionKey


async def _environment(s: AsyncSession, merchant_id: str) -> str:
    merchant = await s.get(Merchant, merchant_id)
    assert merchant is not None
    return merchant.environment


async def load_agent(s: AsyncSession, principal: Principal, agent_id: str,
                     *, lock: bool = False) -> Agent:
    agent = await fetch_owned(s, Agent, agent_id, principal, lock=lock,
                              where=(Agent.status != "deleted",))
    if agent is None or (principal.agent_id is not None and principal.agent_id != agent.id):
        raise NotFound(f"no agent {agent_id!r}", code="agent_not_found")
    return agent


MAX_TOKEN_LIFETIME_S = 366 * 24 * 3600


def token_expiry(now: datetime, expires_in_seconds: int | None) -> datetime | None:
    """When an agent token stops working: never (None) or after 60 s to a year."""
    if expires_in_seconds is None:
        return None
    if not 60 <= expires_in_seconds <= MAX_TOKEN_LIFETIME_S:
        raise InvalidRequest(f"expires_in_seconds must be between 60 and "
                             f"{MAX_TOKEN_LIFETIME_S}", code="invalid_expiry")
    return now + timedelta(seconds=expires_in_seconds)


async def create_agent(ctx: AppContext, principal: Principal, name: str,
                       expires_in_seconds: int | None = None) -> dict[str, Any]:
    principal.require_merchant("create agents")
    if not name or len(name) > 200:
        raise InvalidRequest("name must be 1 to 200 characters", code="invalid_name")
    now = ctx.now()
    expires_at = token_expiry(now, expires_in_seconds)
    async with ctx.db.transaction() as s:
        token = tokens.generate("agent", await _environment(s, principal.merchant_id))
        agent = Agent(id=new_id("agt"), merchant_id=principal.merchant_id, name=name,
                      status="active", token_hash=tokens.token_hash(token),
                      token_hint=tokens.hint(token), token_expires_at=expires_at,
                      created_at=now, updated_at=now)
        s.add(agent)
    return {**agent_view(agent), "token": token}


async def get_agent(ctx: AppContext, principal: Principal, agent_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        return agent_view(await load_agent(s, principal, agent_id))


async def list_agents(ctx: AppContext, principal: Principal, page: Page) -> dict[str, Any]:
    principal.require_merchant("list agents")
    async with ctx.db.sessions() as s:
        stmt = select(Agent).where(Agent.merchant_id == principal.merchant_id,
                                   Agent.status != "deleted")
        rows = (await s.execute(page.apply(stmt, Agent.id))).scalars().all()
    return page_body(rows, page, agent_view)


async def rotate_token(ctx: AppContext, principal: Principal, agent_id: str,
                       expires_in_seconds: int | None = None) -> dict[str, Any]:
    """A new token (the old one dies at once), valid for `expires_in_seconds` (or until the
    next rotation)."""
    principal.require_merchant("rotate agent tokens")
    now = ctx.now()
    expires_at = token_expiry(now, expires_in_seconds)
    async with ctx.db.transaction() as s:
        agent = await load_agent(s, principal, agent_id, lock=True)
        token = tokens.generate("agent", await _environment(s, principal.merchant_id))
        agent.token_hash, agent.token_hint = tokens.token_hash(token), tokens.hint(token)
        agent.token_expires_at = expires_at
        agent.updated_at = now
    return {**agent_view(agent), "token": token}


async def set_frozen(ctx: AppContext, principal: Principal, agent_id: str,
                     frozen: bool) -> dict[str, Any]:
    principal.require_merchant("freeze or unfreeze agents")
    async with ctx.db.transaction() as s:
        agent = await load_agent(s, principal, agent_id, lock=True)
        agent.status = "frozen" if frozen else "active"
        agent.updated_at = ctx.now()
    return agent_view(agent)


async def delete_agent(ctx: AppContext, principal: Principal, agent_id: str) -> dict[str, Any]:
    """Soft delete: the token dies at once; its live session keys are revoked (their
    remainders go back to their users through the refund sweep, as for any revoked key) and
    its active policy sessions too; keys and payments stay for the books."""
    principal.require_merchant("delete agents")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        agent = await load_agent(s, principal, agent_id, lock=True)
        if agent.status == "deleted":
            raise Conflict("agent already deleted", code="agent_deleted")
        agent.status = "deleted"
        agent.token_hash = "deleted:" + agent.id  # frees nothing, matches no token
        agent.updated_at = now
        keys = (await s.execute(select(SessionKey).where(
            SessionKey.agent_id == agent.id,
            SessionKey.status.in_([k.value for k in KeyStatus if is_live(k)]))
            .order_by(SessionKey.id).with_for_update())).scalars().all()
        for key in keys:  # as `session_keys.revoke` does, one by one
            key.status = transition(KeyStatus(key.status), KeyStatus.REVOKED).value
            key.revoked_at = key.updated_at = now
            if key.refund_on_close:
                key.refund_status = "pending"
            emit(s, merchant_id=key.merchant_id, type="session_key.revoked",
                 object_type="session_key", object_id=key.id,
                 data={**session_key_view(key), "revoked_by": "merchant"}, now=now)
        sessions = (await s.execute(select(PolicySession).where(
            PolicySession.agent_id == agent.id,
            PolicySession.status == SessionStatus.ACTIVE.value)
            .order_by(PolicySession.id).with_for_update())).scalars().all()
        for policy in sessions:
            policy.status, policy.revoked_at = SessionStatus.REVOKED.value, now
            emit(s, merchant_id=policy.merchant_id, type="session.revoked",
                 object_type="session", object_id=policy.id,
                 data=policy_session_view(policy), now=now)
    return {**agent_view(agent), "deleted": True,
            "revoked_session_key_ids": [k.id for k in keys]}
