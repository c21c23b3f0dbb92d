"""Single-statement writes for the payment hot path, without the ORM's unit of work.

Each statement is built once per shape (table and columns) with bound parameters, so
SQLAlchemy compiles it once and every later call only binds values; the column types
(money as BaseUnits, times as UtcDateTime) still convert them.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.sql.dml import Insert, Update

from zpay.store.direct import Executor

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
