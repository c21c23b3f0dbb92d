"""Tenancy in one place: every row belongs to one merchant; agent tokens see their own."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.services.auth import Principal
from zpay.services.rows import transient
from zpay.store.direct import Executor
from zpay.store.models import PolicySession, SessionKey

M = TypeVar("M")


async def fetch_owned(s: AsyncSession, model: type[M], row_id: str, principal: Principal,
                      *, lock: bool = False, where: tuple[Any, ...] = ()) -> M | None:
    """The merchant's row with this id (locked FOR UPDATE if asked), or None: another
    merchant's id is indistinguishable from an unknown one."""
    table: Any = model
    stmt = select(model).where(table.id == row_id, table.merchant_id == principal.merchant_id,
                               *session_scope(table, principal), *where)
    if lock:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).scalar()


async def copy_owned(x: Executor, model: type[M], row_id: str, principal: Principal,
                     *, lock: bool = False) -> M | None:
    """`fetch_owned` with one Core statement (either unit of work of the payment hot path),
    as a transient copy: read, or written back with single statements (services.rows)."""
    row = (await x.execute(owned_statement(model, lock=lock,
                                           scoped=principal.policy_session_id is not None),
                           owned_values(row_id, principal))).first()
    return None if row is None else transient(model, row._mapping)


_COPY_STATEMENTS: dict[tuple[Any, bool, bool], Select[Any]] = {}


def owned_values(row_id: str, principal: Principal) -> dict[str, Any]:
    """The values `owned_statement` binds."""
    return {"id": row_id, "merchant_id": principal.merchant_id,
            "scope": principal.policy_session_id}


def owned_statement(model: Any, *, lock: bool, scoped: bool) -> Select[Any]:
    """The row of `model` with an id that the principal owns (its merchant's; for a session
    token, `scoped`, only within its session): `fetch_owned` as one Core statement, built
    once per (model, lock, scoped) — each call only binds `owned_values` (store.direct)."""
    stmt = _COPY_STATEMENTS.get((model, lock, scoped))
    if stmt is None:
        table = model.__table__
        stmt = select(table).where(table.c.id == bindparam("id"),
                                   table.c.merchant_id == bindparam("merchant_id"))
        column = _scoped_column(model)
        if scoped and column is not None:
            stmt = stmt.where(table.c[column.key] == bindparam("scope"))
        if lock:
            stmt = stmt.with_for_update()
        _COPY_STATEMENTS[(model, lock, scoped)] = stmt
    return stmt


def visible(model: Any, principal: Principal) -> Select[Any]:
    """SELECT of the rows `principal` may list: its merchant's, an agent's own only, and for
    a policy-session token only what it can act on (see `session_scope`)."""
    stmt = select(model).where(model.merchant_id == principal.merchant_id,
                               *session_scope(model, principal))
    if principal.agent_id is not None:
        stmt = stmt.where(model.agent_id == principal.agent_id)
    return stmt


def session_scope(model: Any, principal: Principal) -> tuple[Any, ...]:
    """The extra conditions for a policy-session (`as_…`) token, which acts only through its
    own session: that session itself, and the session keys linked to it (hence their
    payments and attempts). Other models are not narrowed here (their services decide:
    merchant-only resources refuse agent tokens outright)."""
    session_id, column = principal.policy_session_id, _scoped_column(model)
    if session_id is None or column is None:
        return ()
    return (column == session_id,)


def _scoped_column(model: Any) -> Any:
    """The column a policy-session token narrows `model` by (None: not narrowed here)."""
    if model is PolicySession:
        return PolicySession.id
    if model is SessionKey:
        return SessionKey.policy_session_id
    return None


def can_see_key(key: SessionKey, principal: Principal) -> bool:
    """Whether `principal` may see (and so act on) this session key."""
    return (key.merchant_id == principal.merchant_id
            and (principal.agent_id is None or key.agent_id == principal.agent_id)
            and (principal.policy_session_id is None
                 or key.policy_session_id == principal.policy_session_id))
