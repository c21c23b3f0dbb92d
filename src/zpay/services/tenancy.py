"""Tenancy in one place: every row belongs to one merchant; agent tokens see their own."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.services.auth import Principal

M = TypeVar("M")


async def fetch_owned(s: AsyncSession, model: type[M], row_id: str, principal: Principal,
                      *, lock: bool = False, where: tuple[Any, ...] = ()) -> M | None:
    """The merchant's row with this id (locked FOR UPDATE if asked), or None: another
    merchant's id is indistinguishable from an unknown one."""
    table: Any = model
    stmt = select(model).where(table.id == row_id, table.merchant_id == principal.merchant_id,
                               *where)
    if lock:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).scalar()


def visible(model: Any, principal: Principal) -> Select[Any]:
    """SELECT of the rows `principal` may list: its merchant's, and an agent's own only."""
    stmt = select(model).where(model.merchant_id == principal.merchant_id)
    if principal.agent_id is not None:
        stmt = stmt.where(model.agent_id == principal.agent_id)
    return stmt
