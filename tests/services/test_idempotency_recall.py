"""What a batch's Idempotency-Keys already did is read with one probe of the
(merchant, principal, key) unique index per key: a merchant's thousands of earlier records
are never scanned (each coalesced authorization would otherwise read them all), not even
by a plan PostgreSQL made while the table was young."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, text

from zpay.services.context import AppContext
from zpay.services.idempotency import _RECALL_MANY, recall_many
from zpay.services.merchants import create_merchant
from zpay.store.models import IdempotencyRecord

RECORDS = 3_000


async def _generic_plan(hot: Any, sql: str, args: list[list[str]]) -> Any:
    """EXPLAIN ANALYZE of the plan PostgreSQL caches for a prepared statement."""
    connection = hot._connection  # the direct executor's asyncpg connection
    literals = ", ".join("'{" + ",".join(values) + "}'" for values in args)
    await connection.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await connection.execute(f"PREPARE recall_probe AS {sql}")
        document = await connection.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE recall_probe({literals})")
        await connection.execute("DEALLOCATE recall_probe")
    finally:
        await connection.execute("RESET plan_cache_mode")
    [plan] = json.loads(document) if isinstance(document, str) else document
    return plan["Plan"]


def _rows_scanned(plan: Any) -> int:
    """Rows a PostgreSQL plan read from idempotency_records and threw away."""
    node = plan if isinstance(plan, dict) else {}
    removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return removed + sum(_rows_scanned(child) for child in node.get("Plans", []))


async def test_a_batch_recall_probes_the_index_whatever_the_history(ctx: AppContext) -> None:
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    now = ctx.now()
    records = [dict(
        id=f"idem_{i:030d}", merchant_id=merchant, principal=f"agent:{i % 2}",
        key=f"order-{i}", request_hash="h" * 64, status="completed", payment_id=None,
        response_status=402, response_body="{}", created_at=now,
        expires_at=now + timedelta(days=1)) for i in range(RECORDS)]
    async with ctx.db.sessions() as s:
        # PostgreSQL: statistics taken while the table was young, then it grows (a young
        # deployment between two autovacuum passes). SQLite gathers none unless asked,
        # and zpay never asks: its planner's defaults favour the index.
        await s.execute(insert(IdempotencyRecord), records[:20])
        await s.commit()
        if ctx.db.dialect == "postgresql":
            await s.execute(text("ANALYZE idempotency_records"))
            await s.commit()
        await s.execute(insert(IdempotencyRecord), records[20:])
        await s.commit()
    wanted = [(merchant, "agent:1", "order-1"), (merchant, "agent:0", "order-2"),
              (merchant, "agent:0", "order-1"),  # order-1 is agent 1's, not agent 0's
              (merchant, "agent:1", "order-never")]
    triples = sorted(wanted)
    params = {"merchants": [m for m, _, _ in triples],
              "principals": [p for _, p, _ in triples], "keys": [k for _, _, k in triples]}
    async with ctx.db.sessions() as s:
        found = await recall_many(s, ctx.db.dialect, wanted)
        assert set(found) == {(merchant, "agent:1", "order-1"), (merchant, "agent:0", "order-2")}

        statement = _RECALL_MANY[ctx.db.dialect]
        connection = await s.connection()
        if ctx.db.dialect == "postgresql":
            compiled = statement.compile(dialect=s.bind.dialect)
            raw = await connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}",
                tuple(params[name] for name in compiled.positiontup or ()))
            document = raw.scalar_one()  # asyncpg decodes the json column itself
            [plan] = json.loads(document) if isinstance(document, str) else document
            assert _rows_scanned(plan["Plan"]) == 0, plan
            # The plan a hot-path connection keeps for the statement (generic, made once
            # per connection) probes the index too, though the statistics say the table
            # holds 20 rows.
            async with ctx.db.hot_reads() as hot:
                generic = await _generic_plan(hot, str(compiled), [
                    params[name] for name in compiled.positiontup or ()])
            assert _rows_scanned(generic) == 0 and "Seq Scan" not in json.dumps(generic), (
                generic)
        else:
            literal = statement.params(params).compile(
                dialect=s.bind.dialect, compile_kwargs={"literal_binds": True})
            raw = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {literal}")
            [(*_, detail)] = raw.all()
            assert "(merchant_id=? AND principal=? AND key=?)" in detail, detail
