"""Single-statement writes for the payment hot path, without the ORM's unit of work.

Each statement is built once per shape (table and columns) with bound parameters, so
SQLAlchemy compiles it once and every later call only binds values; the column types
(money as BaseUnits, times as UtcDateTime) still convert them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Table, any_, bindparam, insert, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import Insert, Update

from zpay.store.direct import Executor

M = TypeVar("M")
_INSERTS: dict[str, Insert] = {}
_UPDATES: dict[tuple[str, tuple[str, ...]], Update] = {}
_UPDATED_TABLE: dict[int, Table] = {}  # id of an `update_row` statement (kept above) → table


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


def _update_of(table: Table, columns: Iterable[str]) -> Update:
    """The UPDATE-by-id statement setting `columns` of `table` (one per shape, kept)."""
    shape = (table.name, tuple(sorted(columns)))
    stmt = _UPDATES.get(shape)
    if stmt is None:
        # Parameters are prefixed: a bound parameter may not share a SET column's name.
        stmt = _UPDATES[shape] = update(table).where(
            table.c.id == bindparam("row_id")).values(
            {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in shape[1]})
        _UPDATED_TABLE[id(stmt)] = table
    return stmt


async def update_row(s: Executor, model: Any, row_id: str, values: dict[str, Any]) -> None:
    """UPDATE one row by its id; `values` are the columns to set."""
    await s.execute(_update_of(table_of(model), values),
                    {"row_id": row_id, **{f"v_{k}": v for k, v in values.items()}})


class DeferredWrites:
    """The executor for a transaction that writes many rows and reads none of them back (a
    coalesced batch of payments): `insert_row`s — and `update_row`s of the tables named in
    `updates` — wait for `flush`, which sends them in as few round trips as the executor
    allows: ONE statement on PostgreSQL (`execute_together`: the rows of each shape
    written from arrays of their values), else one executemany per shape; always in the
    order first made (a parent before its children), the updates after the inserts. Two
    updates of one row are one (the later values win): one statement may not change a row
    twice. Every other statement runs at once: use it only where no statement reads what
    a deferred one writes."""

    def __init__(self, executor: Executor, *, updates: tuple[Any, ...] = ()) -> None:
        self._executor = executor
        self._updated_tables: set[str] = set()
        self.defer_updates(*updates)
        self._pending: dict[tuple[int, tuple[str, ...]], tuple[Any, list[dict[str, Any]]]] = {}
        self._updates: dict[tuple[str, str], tuple[Table, dict[str, Any]]] = {}

    def defer_updates(self, *models: Any) -> None:
        """From now on, `update_row`s of these models' tables wait for `flush` too."""
        self._updated_tables |= {table_of(model).name for model in models}

    async def execute(self, statement: Any, params: Any = None, /) -> Any:
        if not isinstance(params, dict):
            return await self._executor.execute(statement, params)
        table = _UPDATED_TABLE.get(id(statement))  # an `update_row` statement
        if table is not None and table.name in self._updated_tables:
            _, values = self._updates.setdefault((table.name, params["row_id"]), (table, {}))
            values.update(params)
            return None
        name = getattr(getattr(statement, "table", None), "name", "")
        if statement is not _INSERTS.get(name):
            return await self._executor.execute(statement, params)
        shape = (id(statement), tuple(sorted(params)))
        self._pending.setdefault(shape, (statement, []))[1].append(params)
        return None

    async def flush(self) -> None:
        for table, values in self._updates.values():
            columns = [name.removeprefix("v_") for name in values if name != "row_id"]
            statement = _update_of(table, columns)
            self._pending.setdefault((id(statement), tuple(sorted(values))),
                                     (statement, []))[1].append(values)
        self._updates = {}
        pending, self._pending = list(self._pending.values()), {}
        if not pending:
            return
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
