"""The hot path's own pool of asyncpg connections (PostgreSQL only: SQLite's hot path is
SQLAlchemy's session). A connection comes back usable or not at all."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import exc as sa_exc

from tests.conftest import PG_DSN
from zpay.store import direct_pool
from zpay.store.direct_pool import DirectPool


@pytest.fixture
async def pool(pg_database: str) -> DirectPool:
    return DirectPool(f"{PG_DSN}/{pg_database}", 2)


async def test_an_idle_connection_is_reused_and_reads_json_as_sqlalchemy_does(
        pool: DirectPool) -> None:
    first, opened = await pool.acquire()
    assert await first.fetchval("SELECT $1::jsonb", '{"a": [1, 2]}') == {"a": [1, 2]}
    pool.release(first, opened)
    again, _ = await pool.acquire()
    assert again is first
    pool.release(again, opened)
    await pool.close()
    assert first.is_closed()


async def test_a_connection_left_in_a_transaction_or_too_old_is_closed_not_reused(
        pool: DirectPool, monkeypatch: pytest.MonkeyPatch) -> None:
    in_tx, opened = await pool.acquire()
    await in_tx.execute("BEGIN")
    pool.release(in_tx, opened)
    assert in_tx.is_closed()
    old, opened = await pool.acquire()
    assert old is not in_tx
    monkeypatch.setattr(direct_pool, "RECYCLE_S", -1)
    pool.release(old, opened)
    assert old.is_closed()
    fresh, opened = await pool.acquire()
    assert not fresh.is_closed() and await fresh.fetchval("SELECT 1") == 1
    pool.release(fresh, opened)
    await pool.close()


async def test_at_most_size_connections_and_a_bounded_wait(
        pool: DirectPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_pool, "CHECKOUT_TIMEOUT_S", 0.2)
    held = [await pool.acquire() for _ in range(2)]
    with pytest.raises(sa_exc.TimeoutError):
        await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.release(*held.pop())  # a slot freed: the waiter gets it
    got = await asyncio.wait_for(waiter, 5)
    for connection, opened in (*held, got):
        pool.release(connection, opened)
    await pool.close()
    with pytest.raises(sa_exc.InvalidRequestError):
        await pool.acquire()
