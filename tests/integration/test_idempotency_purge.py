"""Idempotency records are purged once expired (the scheduler runs the purge), never before."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.services.idempotency import purge_expired, remember
from zpay.services.merchants import create_merchant
from zpay.store.models import IdempotencyRecord


async def test_purge_removes_only_expired_records(ctx: AppContext) -> None:
    merchant = Principal((await create_merchant(ctx, "m")).merchant_id, Role.MERCHANT)
    async with ctx.db.transaction() as s:
        await remember(s, ctx, merchant, "old", "h1", refusal={"code": "x", "message": "x"})
    later = ctx.now() + timedelta(seconds=ctx.settings.idempotency_ttl_s + 1)
    ctx.clock = lambda: later
    async with ctx.db.transaction() as s:
        await remember(s, ctx, merchant, "new", "h2", refusal={"code": "x", "message": "x"})
    assert await purge_expired(ctx) == 1
    async with ctx.db.sessions() as s:
        keys = (await s.execute(select(IdempotencyRecord.key))).scalars().all()
    assert keys == ["new"]
    assert await purge_expired(ctx) == 0
