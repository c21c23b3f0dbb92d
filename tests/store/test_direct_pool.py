"""The hot path's own pool of asyncpg connections (PostgreSQL only: SQLite's hot path is
SQLAlchemy's session). A connection comes back usable or not at all."""

from __future__ import annotations

import asyncio

import asyncpg
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


async def _plans_of(connection: asyncpg.Connection, sql: str, *args: object) -> tuple[int, int]:
    """(generic, custom) plans PostgreSQL made for a statement run 8 times as a prepared
    statement (asyncpg's cache), as the hot path runs it."""
    for _ in range(8):
        await connection.fetch(sql, *args)
    return await connection.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
        "WHERE statement = $1", sql)


async def test_a_keyed_statement_is_planned_once_per_connection(
        pool: DirectPool, pg_database: str) -> None:
    """PostgreSQL re-plans an `= ANY($1)` lookup on every execution by default (its
    generic plan's cost, guessed for an array of unknown length, loses to the custom
    plans'): ~0.1 ms per statement of a payment. The hot path's connections plan it once."""
    sql = "SELECT oid FROM pg_class WHERE oid = ANY($1::oid[]) ORDER BY oid"
    hot, opened = await pool.acquire()
    try:
        assert tuple(await _plans_of(hot, sql, [1259])) == (8, 0)
    finally:
        pool.release(hot, opened)
    plain = await asyncpg.connect(f"{PG_DSN}/{pg_database}")
    try:  # the default, for contrast: a custom plan on every execution
        assert tuple(await _plans_of(plain, sql, [1259])) == (0, 8)
    finally:
        await plain.close()
    await pool.close()
