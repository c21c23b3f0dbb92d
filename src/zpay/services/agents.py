"""Agents and their tokens: create (shown once), rotate, freeze/unfreeze, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.domain import tokens
from zpay.domain.errors import Conflict, InvalidRequest, NotFound
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page, page_body
from zpay.services.tenancy import fetch_owned
from zpay.services.views import agent_view
from zpay.store.ids import new_id
from zpay.store.models import Agent, Merchant


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


async def create_agent(ctx: AppContext, principal: Principal, name: str) -> dict[str, Any]:
    principal.require_merchant("create agents")
    if not name or len(name) > 200:
        raise InvalidRequest("name must be 1 to 200 characters", code="invalid_name")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        token = tokens.generate("agent", await _environment(s, principal.merchant_id))
        agent = Agent(id=new_id("agt"), merchant_id=principal.merchant_id, name=name,
                      status="active", token_hash=tokens.token_hash(token),
                      token_hint=tokens.hint(token), created_at=now, updated_at=now)
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


async def rotate_token(ctx: AppContext, principal: Principal, agent_id: str) -> dict[str, Any]:
    principal.require_merchant("rotate agent tokens")
    async with ctx.db.transaction() as s:
        agent = await load_agent(s, principal, agent_id, lock=True)
        token = tokens.generate("agent", await _environment(s, principal.merchant_id))
        agent.token_hash, agent.token_hint = tokens.token_hash(token), tokens.hint(token)
        agent.updated_at = ctx.now()
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
    """Soft delete: the token dies at once; keys and payments stay for the books."""
    principal.require_merchant("delete agents")
    async with ctx.db.transaction() as s:
        agent = await load_agent(s, principal, agent_id, lock=True)
        if agent.status == "deleted":
            raise Conflict("agent already deleted", code="agent_deleted")
        agent.status = "deleted"
        agent.token_hash = "deleted:" + agent.id  # frees nothing, matches no token
        agent.updated_at = ctx.now()
    return {**agent_view(agent), "deleted": True}
