"""Idempotency records are purged once expired (the scheduler runs the purge), never before."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from zpay.services.context import AppContext
from zpay.services.idempotency import claim, purge_expired
from zpay.services.merchants import create_merchant
from zpay.store.models import IdempotencyRecord


async def test_purge_removes_only_expired_records(ctx: AppContext) -> None:
    merchant = await create_merchant(ctx, "m")
    assert await claim(ctx, merchant.merchant_id, "old", "h1") is None
    later = ctx.now() + timedelta(seconds=ctx.settings.idempotency_ttl_s + 1)
    ctx.clock = lambda: later
    assert await claim(ctx, merchant.merchant_id, "new", "h2") is None
    assert await purge_expired(ctx) == 1
    async with ctx.db.sessions() as s:
        keys = (await s.execute(select(IdempotencyRecord.key))).scalars().all()
    assert keys == ["new"]
    assert await purge_expired(ctx) == 0
