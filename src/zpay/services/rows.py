"""Single-statement writes for the payment hot path, without the ORM's unit of work.

Each statement is built once per shape (table and columns) with bound parameters, so
SQLAlchemy compiles it once and every later call only binds values; the column types
(money as BaseUnits, times as UtcDateTime) still convert them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Table, any_, bindparam, insert, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import Insert, Update

from zpay.store.direct import Executor

M = TypeVar("M")
_INSERTS: dict[str, Insert] = {}
_UPDATES: dict[tuple[str, tuple[str, ...]], Update] = {}
_UPDATED_TABLE: dict[int, str] = {}  # id of an `update_row` statement (kept above) → table


def table_of(model: Any) -> Table:
    return cast(Table, model.__table__)


def ids_in(column: Any, dialect: str, name: str = "ids") -> ColumnElement[bool]:
    """`column` among the list bound as `name`: `= ANY($1)` on PostgreSQL (one fixed shape,
    which the direct executor runs), an expanding `IN` elsewhere."""
    if dialect == "postgresql":
        return cast(ColumnElement[bool], column == any_(bindparam(name, type_=ARRAY(column.type))))
    return cast(ColumnElement[bool], column.in_(bindparam(name, expanding=True)))


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
        _UPDATED_TABLE[id(stmt)] = table.name
    await s.execute(stmt, {"row_id": row_id, **{f"v_{k}": v for k, v in values.items()}})


class DeferredWrites:
    """The executor for a transaction that writes many rows and reads none of them back (a
    coalesced batch of payments): `insert_row`s — and `update_row`s of the tables named in
    `updates` — wait for `flush`, which sends them in as few round trips as the executor
    allows: ONE statement on PostgreSQL (`execute_together`: the rows of each shape
    written from arrays of their values), else one executemany per shape; always in the
    order first made (a parent before its children). Every other statement runs at once:
    use it only where no statement reads what a deferred one writes."""

    def __init__(self, executor: Executor, *, updates: tuple[Any, ...] = ()) -> None:
        self._executor = executor
        self._updated_tables = {table_of(model).name for model in updates}
        self._pending: dict[tuple[int, tuple[str, ...]], tuple[Any, list[dict[str, Any]]]] = {}

    def _deferred(self, statement: Any, params: Any) -> bool:
        if not isinstance(params, dict):
            return False
        name = getattr(getattr(statement, "table", None), "name", "")
        if statement is _INSERTS.get(name):
            return True
        # An `update_row` statement (they live as long as the process) of a table named
        # in `updates`.
        return _UPDATED_TABLE.get(id(statement)) in self._updated_tables

    async def execute(self, statement: Any, params: Any = None, /) -> Any:
        if not self._deferred(statement, params):
            return await self._executor.execute(statement, params)
        shape = (id(statement), tuple(sorted(params)))
        self._pending.setdefault(shape, (statement, []))[1].append(params)
        return None

    async def flush(self) -> None:
        pending, self._pending = list(self._pending.values()), {}
        together = getattr(self._executor, "execute_together", None)
        if together is not None:
            await together(pending)
            return
        for statement, rows in pending:
            # One row: a plain execute (an executemany of one costs a little more).
            await self._executor.execute(statement, rows[0] if len(rows) == 1 else rows)


def transient(model: type[M], values: Mapping[str, Any]) -> M:
    """A row read with a Core statement as a transient instance of its model, the way the
    ORM's own loader builds one (no `__init__`: ~20x cheaper on the hot path)."""
    instance: M = model.__mapper__.class_manager.new_instance()  # type: ignore[attr-defined]
    instance.__dict__.update(values)
    return instance
