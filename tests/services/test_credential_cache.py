"""The per-process credential cache: a hit answers without the database, and every change
that can end a token — freeze, rotation, revocation of an API key or a policy session,
made in this process or ANOTHER one — is refused on the very next call."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from zpay.domain import tokens
from zpay.domain.errors import Unauthorized
from zpay.services import agents, api_keys, sessions
from zpay.services.auth import Principal, Role, authenticate
from zpay.services.context import AppContext
from zpay.services.credential_cache import cache_of
from zpay.services.merchants import create_merchant


async def _listening(ctx: AppContext) -> bool:
    """Once the process LISTENs (PostgreSQL), authenticated tokens are remembered."""
    cache = cache_of(ctx.db)
    cache.get("warm-up", ctx.now())  # starts the listener
    for _ in range(100):
        if cache.enabled:
            return True
        await asyncio.sleep(0.05)
    return False


async def _cached(ctx: AppContext, token: str) -> bool:
    return cache_of(ctx.db).get(tokens.token_hash(token), ctx.now()) is not None


async def _refused(ctx: AppContext, token: str) -> str:
    with pytest.raises(Unauthorized) as refused:
        await authenticate(ctx, f"Bearer {token}")
    return refused.value.code


async def _merchant_and_agent(ctx: AppContext) -> tuple[Principal, str, dict[str, str]]:
    created = await create_merchant(ctx, "shop")
    merchant = Principal(created.merchant_id, Role.MERCHANT)
    agent = await agents.create_agent(ctx, merchant, "bot", None)
    return merchant, created.api_key, agent


async def test_hits_on_postgresql_only_and_a_freeze_is_refused_at_once(ctx: AppContext) -> None:
    merchant, _key, agent = await _merchant_and_agent(ctx)
    on_postgres = ctx.db.dialect == "postgresql"
    assert await _listening(ctx) is on_postgres
    principal = await authenticate(ctx, f"Bearer {agent['token']}")
    assert principal.agent_id == agent["id"]
    assert await _cached(ctx, agent["token"]) is on_postgres  # SQLite: never remembered

    await agents.set_frozen(ctx, merchant, agent["id"], True)
    assert await _refused(ctx, agent["token"]) == "agent_frozen"
    await agents.set_frozen(ctx, merchant, agent["id"], False)
    assert (await authenticate(ctx, f"Bearer {agent['token']}")).agent_id == agent["id"]


async def test_rotation_revocation_and_session_end_are_refused_at_once(
        ctx: AppContext) -> None:
    merchant, api_key, agent = await _merchant_and_agent(ctx)
    await _listening(ctx)
    session = await sessions.create_session(ctx, merchant, sessions.SessionRequest(
        agent_id=agent["id"], max_per_day="10"))
    extra = await api_keys.create_api_key(ctx, merchant, "ci")
    for token in (agent["token"], session["access_token"], extra["secret"], api_key):
        await authenticate(ctx, f"Bearer {token}")  # remembered (PostgreSQL)

    rotated = await agents.rotate_token(ctx, merchant, agent["id"], None)
    assert await _refused(ctx, agent["token"]) == "invalid_credentials"
    assert (await authenticate(ctx, f"Bearer {rotated['token']}")).agent_id == agent["id"]

    await sessions.revoke_session(ctx, merchant, session["id"])
    assert await _refused(ctx, session["access_token"]) == "session_not_active"

    await api_keys.revoke_api_key(ctx, merchant, extra["id"])
    assert await _refused(ctx, extra["secret"]) == "invalid_credentials"
    assert (await authenticate(ctx, f"Bearer {api_key}")).merchant_id == merchant.merchant_id


_FREEZE_ELSEWHERE = textwrap.dedent("""
    import asyncio, sys
    from sqlalchemy import select
    from zpay.store.database import Database
    from zpay.store.models import Agent

    async def main() -> None:
        db = Database(sys.argv[1])
        async with db.transaction() as s:
            agent = (await s.execute(select(Agent).where(Agent.id == sys.argv[2]))).scalar_one()
            agent.status = "frozen"
        await db.dispose()

    asyncio.run(main())
""")


async def test_a_freeze_in_another_process_is_forgotten_here(ctx: AppContext) -> None:
    _merchant, _key, agent = await _merchant_and_agent(ctx)
    on_postgres = ctx.db.dialect == "postgresql"
    assert await _listening(ctx) is on_postgres
    await authenticate(ctx, f"Bearer {agent['token']}")
    assert await _cached(ctx, agent["token"]) is on_postgres  # SQLite reads every time

    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-c", _FREEZE_ELSEWHERE, ctx.settings.database_url, agent["id"]],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Committed there; PostgreSQL delivers the NOTIFY here on its own schedule (sub-ms on
    # one host): the entry goes as soon as this loop reads it.
    for _ in range(100):
        if not await _cached(ctx, agent["token"]):
            break
        await asyncio.sleep(0.02)
    assert await _refused(ctx, agent["token"]) == "agent_frozen"
