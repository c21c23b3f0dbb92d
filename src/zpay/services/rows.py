"""Single-statement writes for the payment hot path, without the ORM's unit of work.

Each statement is built once per shape (table and columns) with bound parameters, so
SQLAlchemy compiles it once and every later call only binds values; the column types
(money as BaseUnits, times as UtcDateTime) still convert them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.sql.dml import Insert, Update

from zpay.store.direct import Executor

M = TypeVar("M")
_INSERTS: dict[str, Insert] = {}
_UPDATES: dict[tuple[str, tuple[str, ...]], Update] = {}


def table_of(model: Any) -> Table:
    return cast(Table, model.__table__)


async def insert_row(s: Executor, model: Any, values: dict[str, Any]) -> None:
    table = table_of(model)
    stmt = _INSERTS.get(table.name)
    if stmt is None:
        stmt = _INSERTS[table.name] = insert(table)
    await s.execute(stmt, values)


async def update_row(s: Executor, model: Any, row_id: str, values: dict[str, Any]) -> None:
    """UPDATE one row by its id; `values` are the columns to set."""
    table = table_of(model)
    shape = (table.name, tuple(sorted(values)))
    stmt = _UPDATES.get(shape)
    if stmt is None:
        # Parameters are prefixed: a bound parameter may not share a SET column's name.
        stmt = _UPDATES[shape] = update(table).where(
            table.c.id == bindparam("row_id")).values(
            {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in shape[1]})
    await s.execute(stmt, {"row_id": row_id, **{f"v_{k}": v for k, v in values.items()}})


class DeferredInserts:
    """The executor for a transaction of many small INSERTs (a coalesced batch of
    payments): `insert_row`s wait and go out at `flush` as one executemany per table
    (asyncpg pipelines the rows: one round trip per table, not per row), tables in the
    order first seen, so a parent inserted first stays first. Every other statement runs
    at once — so use it only where no statement reads what a deferred insert writes."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._pending: dict[str, tuple[Insert, list[dict[str, Any]]]] = {}

    async def execute(self, statement: Any, params: Any = None, /) -> Any:
        name = getattr(getattr(statement, "table", None), "name", "")
        prebuilt = _INSERTS.get(name)
        if prebuilt is not None and statement is prebuilt and isinstance(params, dict):
            self._pending.setdefault(name, (prebuilt, []))[1].append(params)  # insert_row
            return None
        return await self._executor.execute(statement, params)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for statement, many in pending.values():
            # Same columns in every row of a table here; a differing set runs on its own.
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for values in many:
                shapes.setdefault(tuple(sorted(values)), []).append(values)
            for rows in shapes.values():
                # One row: a plain execute (an executemany of one costs a little more).
                await self._executor.execute(statement, rows[0] if len(rows) == 1 else rows)


def transient(model: type[M], values: Mapping[str, Any]) -> M:
    """A row read with a Core statement as a transient instance of its model, the way the
    ORM's own loader builds one (no `__init__`: ~20x cheaper on the hot path)."""
    instance: M = model.__mapper__.class_manager.new_instance()  # type: ignore[attr-defined]
    instance.__dict__.update(values)
    return instance
