"""The hot path's units of work (`Database.hot_transaction` / `hot_reads`): on PostgreSQL
Core statements straight on asyncpg (store.direct), on SQLite SQLAlchemy's session — and
both must read and write exactly the same values, fail the same way, and write all or
nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError

from zpay.services import rows
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant
from zpay.store import direct
from zpay.store.direct import DirectExecutor
from zpay.store.models import Event, Merchant, SessionKey

EVENTS, MERCHANTS = rows.table_of(Event), rows.table_of(Merchant)
BY_ID = select(EVENTS).where(EVENTS.c.id == bindparam("id"))
WHEN = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC)


def _event(merchant_id: str, event_id: str, data: dict[str, object]) -> dict[str, object]:
    return dict(id=event_id, merchant_id=merchant_id, type="payment.succeeded",
                object_type="payment", object_id="pay_x", data=data, dispatched=False,
                created_at=WHEN)


async def test_values_round_trip_as_the_orm_reads_them(ctx: AppContext) -> None:
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    data = {"amount": "12.500000", "nested": {"list": [1, 2, None]}, "unicode": "é€"}
    async with ctx.db.hot_transaction() as x:
        await rows.insert_row(x, Event, _event(merchant, "evt_a", data))
    async with ctx.db.hot_reads() as x:
        row = (await x.execute(BY_ID, {"id": "evt_a"})).one()
        missing = (await x.execute(BY_ID, {"id": "evt_none"})).first()
    async with ctx.db.sessions() as s:
        orm = await s.get(Event, "evt_a")
    assert orm is not None and missing is None
    assert row.data == orm.data == data
    assert row.created_at == orm.created_at == WHEN and row.created_at.tzinfo is not None
    assert row.dispatched is False and row._mapping["object_id"] == "pay_x"
    instance = rows.transient(Event, row._mapping)
    assert (instance.id, instance.data, instance.created_at) == ("evt_a", data, WHEN)


async def test_money_is_an_exact_int_both_ways(ctx: AppContext) -> None:
    keys = rows.table_of(SessionKey)
    huge = 2**255 + 12345  # far past a float's 53 bits
    stmt = select(bindparam("v", type_=keys.c.funded_amount.type).label("v"))
    async with ctx.db.hot_reads() as x:
        value = (await x.execute(stmt, {"v": huge})).scalar_one()
    assert value == huge and type(value) is int


async def test_a_failed_statement_rolls_back_everything_before_it(ctx: AppContext) -> None:
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    async with ctx.db.hot_transaction() as x:
        await rows.insert_row(x, Event, _event(merchant, "evt_kept", {}))
    with pytest.raises(IntegrityError):
        async with ctx.db.hot_transaction() as x:
            await rows.insert_row(x, Event, _event(merchant, "evt_new", {}))
            await rows.insert_row(x, Event, _event(merchant, "evt_kept", {}))  # duplicate id
    async with ctx.db.hot_reads() as x:
        assert (await x.execute(BY_ID, {"id": "evt_new"})).first() is None
        assert (await x.execute(BY_ID, {"id": "evt_kept"})).first() is not None


async def test_deferred_writes_go_out_together_and_all_or_nothing(ctx: AppContext) -> None:
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    async with ctx.db.hot_transaction() as tx:
        writes = rows.DeferredWrites(tx, updates=(Merchant,))
        await rows.insert_row(writes, Event, _event(merchant, "evt_1", {"n": 1}))
        await rows.insert_row(writes, Event, _event(merchant, "evt_2", {"n": 2}))
        await rows.update_row(writes, Merchant, merchant, {"name": "renamed"})
        async with ctx.db.hot_reads() as other:  # nothing is written before the flush
            assert (await other.execute(BY_ID, {"id": "evt_1"})).first() is None
        await writes.flush()
    async with ctx.db.sessions() as s:
        assert (await s.get(Merchant, merchant)).name == "renamed"  # type: ignore[union-attr]
        events = (await s.execute(select(Event.id).where(Event.merchant_id == merchant)
                                  .order_by(Event.id))).scalars().all()
    assert events == ["evt_1", "evt_2"]

    # One row per shape: on PostgreSQL a single statement (data-modifying WITH). A failing
    # part (a duplicate id) leaves none of the others behind.
    with pytest.raises(IntegrityError):
        async with ctx.db.hot_transaction() as tx:
            writes = rows.DeferredWrites(tx, updates=(Merchant,))
            await rows.update_row(writes, Merchant, merchant, {"name": "never"})
            await rows.insert_row(writes, Event, _event(merchant, "evt_1", {}))
            await writes.flush()
    async with ctx.db.sessions() as s:
        assert (await s.get(Merchant, merchant)).name == "renamed"  # type: ignore[union-attr]


async def test_two_deferred_updates_of_one_row_go_out_as_one(ctx: AppContext) -> None:
    """One statement may not change a row twice (PostgreSQL would apply one of the two
    parts of a combined write): a second update of a pending row merges into the first,
    later values winning, columns of both kept; a table deferred later (`defer_updates`)
    waits too, and before that its updates ran at once."""
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    other = (await create_merchant(ctx, "other")).merchant_id
    async with ctx.db.hot_transaction() as tx:
        writes = rows.DeferredWrites(tx)
        await rows.update_row(writes, Merchant, other, {"name": "at once"})
        name_of = select(MERCHANTS.c.name).where(MERCHANTS.c.id == bindparam("id"))
        assert (await tx.execute(name_of, {"id": other})).scalar() == "at once"
        writes.defer_updates(Merchant)
        await rows.update_row(writes, Merchant, merchant, {"name": "first"})
        await rows.update_row(writes, Merchant, merchant, {"name": "second",
                                                           "environment": "live"})
        await rows.update_row(writes, Merchant, merchant, {"name": "third"})
        assert (await tx.execute(name_of, {"id": merchant})).scalar() == "shop"  # waiting
        await writes.flush()
    async with ctx.db.sessions() as s:
        row = await s.get(Merchant, merchant)
        assert row is not None and (row.name, row.environment) == ("third", "live")
        assert (await s.get(Merchant, other)).name == "at once"  # type: ignore[union-attr]


@pytest.mark.parametrize("bound_limit", [30_000, 100])
async def test_many_rows_go_out_exactly_in_chunks_all_or_nothing(
        ctx: AppContext, monkeypatch: pytest.MonkeyPatch, bound_limit: int) -> None:
    """A batch's many rows: on PostgreSQL multi-row VALUES (64 rows at most each), split
    into several statements past the limit of bound values — and every value lands
    exactly, in one transaction, or none does."""
    monkeypatch.setattr(direct, "_MAX_BOUND_VALUES", bound_limit)
    merchants = [(await create_merchant(ctx, f"shop{i}")).merchant_id for i in range(3)]
    async with ctx.db.hot_transaction() as tx:
        writes = rows.DeferredWrites(tx, updates=(Merchant,))
        for n in range(150):
            await rows.insert_row(writes, Event, _event(merchants[n % 3], f"evt_{n:03d}",
                                                        {"n": n, "big": 2**70 + n}))
        for i, merchant in enumerate(merchants):
            await rows.update_row(writes, Merchant, merchant, {"name": f"renamed{i}"})
        await writes.flush()
    async with ctx.db.sessions() as s:
        stored = (await s.execute(select(Event.id, Event.merchant_id, Event.data).where(
            Event.merchant_id.in_(merchants)).order_by(Event.id))).all()
        names = [(await s.get(Merchant, m)).name for m in merchants]  # type: ignore[union-attr]
    assert [(r.id, r.merchant_id, r.data) for r in stored] == [
        (f"evt_{n:03d}", merchants[n % 3], {"n": n, "big": 2**70 + n}) for n in range(150)]
    assert names == ["renamed0", "renamed1", "renamed2"]

    # The last row's duplicate id fails its statement: the rows before it, sent in
    # earlier statements or the same one, are rolled back with it.
    with pytest.raises(IntegrityError):
        async with ctx.db.hot_transaction() as tx:
            writes = rows.DeferredWrites(tx, updates=(Merchant,))
            await rows.update_row(writes, Merchant, merchants[0], {"name": "never"})
            for n in range(150):
                await rows.insert_row(writes, Event, _event(merchants[0], f"evt_new{n:03d}", {}))
            await rows.insert_row(writes, Event, _event(merchants[0], "evt_000", {}))
            await writes.flush()
    async with ctx.db.sessions() as s:
        assert (await s.get(Merchant, merchants[0])).name == "renamed0"  # type: ignore[union-attr]
        assert (await s.execute(select(Event.id).where(
            Event.id.like("evt_new%")))).first() is None


def test_what_cannot_be_run_exactly_is_refused_before_the_database() -> None:
    with pytest.raises(TypeError, match="not ORM objects"):
        DirectExecutor._compiled(select(Event).where(Event.id == "x"), {})
    with pytest.raises(TypeError, match="no fixed shape"):
        DirectExecutor._compiled(select(EVENTS).where(EVENTS.c.id.in_(["a", "b"])), {})


def _reference_args(bound: direct._Bound, params: dict[str, object]) -> list[object]:
    """What SQLAlchemy's `construct_params` gives for the same call."""
    planless = object.__new__(direct._Bound)
    planless.compiled, planless.key, planless._slots = bound.compiled, bound.key, None
    return planless.args(params)


def test_planned_values_are_what_construct_params_gives() -> None:
    """Statements found by identity bind their values from a plan made once: for literals,
    bound parameters, INSERT defaults and two statements of one shape with different
    literals, the values are exactly SQLAlchemy's."""
    keys = rows.table_of(SessionKey)
    merchants = rows.table_of(Merchant)
    by_literal = [select(keys.c.id).where(keys.c.status == status, keys.c.id == bindparam("id"))
                  for status in ("active", "frozen")]  # one shape, two literals
    cases: list[tuple[object, dict[str, object]]] = [
        (by_literal[0], {"id": "sk_1"}),
        (by_literal[1], {"id": "sk_2"}),
        (BY_ID, {"id": "evt_x"}),
        (select(keys.c.id).where(rows.ids_in(keys.c.id, "postgresql")), {"ids": ["a", "b"]}),
        (EVENTS.insert(), _event("mer_1", "evt_z", {"a": 1})),
        (merchants.update().where(merchants.c.id == bindparam("row_id")).values(
            name=bindparam("v_name")), {"row_id": "mer_1", "v_name": "shop"}),
    ]
    for stmt, params in cases:
        bound = DirectExecutor._compiled(stmt, params)  # type: ignore[arg-type]
        assert bound._slots is not None, stmt
        assert DirectExecutor._compiled(stmt, params) is bound  # found by identity
        assert bound.args(params) == _reference_args(bound, params), stmt
    first, second = (DirectExecutor._compiled(s, {"id": "k"}) for s in by_literal)
    assert first.compiled is second.compiled  # compiled once per shape ...
    assert "active" in first.args({"id": "k"}) and "frozen" in second.args({"id": "k"})
    with pytest.raises(InvalidRequestError, match="'id'"):
        DirectExecutor._compiled(BY_ID, {"id": "x"}).args({})


async def test_rows_of_one_shape_go_out_as_one_statement_text_whatever_their_number(
        ctx: AppContext) -> None:
    """Many INSERTed rows, or many rows UPDATEd by id, of one shape: on PostgreSQL one
    statement over arrays of their values (`unnest`), the same text for 2 rows or 40 — so
    it is planned once — and every value (JSON, booleans, times) lands exactly."""
    merchant = (await create_merchant(ctx, "shop")).merchant_id
    for count in (2, 40):
        async with ctx.db.hot_transaction() as tx:
            writes = rows.DeferredWrites(tx, updates=(Event,))
            for n in range(count):
                await rows.insert_row(writes, Event, _event(merchant, f"evt_{count}_{n:02d}",
                                                            {"n": n}))
            await writes.flush()
        async with ctx.db.hot_transaction() as tx:
            writes = rows.DeferredWrites(tx, updates=(Event,))
            for n in range(count):
                await rows.update_row(writes, Event, f"evt_{count}_{n:02d}", {
                    "data": {"n": n, "seen": None} if n % 2 else {"n": -n},
                    "dispatched": n % 3 == 0})
            await writes.flush()
        async with ctx.db.sessions() as s:
            stored = (await s.execute(select(Event.id, Event.data, Event.dispatched).where(
                Event.id.like(f"evt_{count}_%")).order_by(Event.id))).all()
        assert [tuple(r) for r in stored] == [
            (f"evt_{count}_{n:02d}", {"n": n, "seen": None} if n % 2 else {"n": -n}, n % 3 == 0)
            for n in range(count)]
    if ctx.db.dialect == "postgresql":
        texts = [sql for sql in direct._COLUMNAR if sql.startswith(("INSERT INTO events",
                                                                    "UPDATE events"))]
        columnar = [direct._COLUMNAR[sql] for sql in texts]
        assert len(texts) == 2 and all(c is not None and "unnest(" in c.sql for c in columnar)
