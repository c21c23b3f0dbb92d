"""A policy session's day/week/month windows as running totals on its row.

Authorizing costs the same on day 1 and day 30: each window keeps `since` and `used` (the
sum of the counted payments — held or captured — created at or after `since`). Under the
session's row lock, an authorization moves each `since` to its window's start at `now`,
subtracting the payments that left the window in between (read through the
(policy_session_id, created_at) index: only what crossed a boundary, so each payment
leaves each window once), and adds its own payment. A released payment is subtracted from
the windows that still count it; a late capture adds it back. Every figure is exact, for
rolling windows and for calendar windows in any timezone (their starts come from
`WindowSpec.bounds`). A move backwards (a process whose clock is behind) adds back what it
brings in, so even that stays exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from zpay.domain.lifecycle import COUNTED
from zpay.domain.windows import (
    RunningTotal,
    Window,
    WindowMode,
    WindowSpec,
    WindowUsage,
    crossings,
    move_totals,
    with_spend,
)
from zpay.services.rows import table_of, update_row
from zpay.store.direct import Executor
from zpay.store.models import Payment, PolicySession

_COUNTED = [status.value for status in COUNTED]
_PAYMENTS, _POLICIES = table_of(Payment), table_of(PolicySession)


def _counted() -> Any:
    # Not `IN (…)`: an expanding parameter has no fixed shape for the direct executor.
    return or_(*(_PAYMENTS.c.status == status for status in _COUNTED))


def running_totals(policy: Any) -> dict[Window, RunningTotal]:
    """The totals as stored on a policy session's row (an ORM object or a Core row)."""
    return {w: RunningTotal(getattr(policy, f"{w.value}_since"), getattr(policy, f"{w.value}_used"))
            for w in Window}


async def totals_at(s: Executor, policy_id: str,
                    stored: dict[Window, RunningTotal], spec: WindowSpec,
                    now: datetime) -> dict[Window, RunningTotal]:
    """Each window moved to its start at `now`: one indexed read of the payments that
    crossed a boundary since the last move, none when no window moved (nothing written)."""
    starts = {w: spec.bounds(w, now)[0] for w in Window}
    spans = crossings(stored, starts)
    crossed: list[tuple[datetime, int]] = []
    if spans:
        crossed = [(at, amount) for at, amount in await s.execute(
            select(_PAYMENTS.c.created_at, _PAYMENTS.c.amount).where(
                _PAYMENTS.c.policy_session_id == policy_id, _counted(),
                or_(*(and_(_PAYMENTS.c.created_at >= lo, _PAYMENTS.c.created_at < hi)
                      for lo, hi, _sign in spans.values()))))]
    return move_totals(stored, starts, crossed)


async def moved(s: Executor, policy: PolicySession, spec: WindowSpec,
                now: datetime) -> dict[Window, RunningTotal]:
    """A session's stored totals moved to `now` (see `totals_at`)."""
    return await totals_at(s, policy.id, running_totals(policy), spec, now)


def values(totals: dict[Window, RunningTotal]) -> dict[str, Any]:
    """Column values of the totals, for an UPDATE of the policy session's row."""
    out: dict[str, Any] = {}
    for window, total in totals.items():
        out[f"{window.value}_since"], out[f"{window.value}_used"] = total.since, total.used
    return out


async def book_payment(s: Executor, policy_id: str, amount: int, at: datetime) -> None:
    """Under the session's row lock: a payment created at `at` enters (`amount` > 0: a late
    capture of a released one) or leaves (< 0: released) what the windows count."""
    policy = (await s.execute(select(_POLICIES).where(_POLICIES.c.id == policy_id))).one()
    totals = with_spend(running_totals(policy), amount, at)
    # Computed here, not in SQL: on SQLite money columns are padded text (store.types).
    await update_row(s, PolicySession, policy_id, dict(
        total_committed=policy.total_committed + amount, **values(totals)))


def usage(spec: WindowSpec, totals: dict[Window, RunningTotal], now: datetime,
          oldest: dict[Window, datetime | None] | None = None) -> dict[Window, WindowUsage]:
    """What the domain's policy check reads. Calendar windows reset at their boundary;
    rolling ones when their oldest counted payment ages out (`oldest`, when known)."""
    out = {}
    for window, total in totals.items():
        start, end = spec.bounds(window, now)
        if spec.mode is WindowMode.ROLLING:
            first = (oldest or {}).get(window)
            end = first + (now - start) if first is not None else None
        out[window] = WindowUsage(window, total.used, start, end)
    return out


async def oldest_counted(s: AsyncSession, policy_id: str,
                         totals: dict[Window, RunningTotal]) -> dict[Window, datetime | None]:
    """The oldest counted payment inside each window (for `frees_up_at`; not on the hot
    path)."""
    out: dict[Window, datetime | None] = {}
    for window, total in totals.items():
        out[window] = (await s.execute(select(func.min(Payment.created_at)).where(
            Payment.policy_session_id == policy_id, Payment.status.in_(_COUNTED),
            Payment.created_at >= total.since))).scalar()
    return out


async def rebuild(conn: AsyncSession | AsyncConnection, policy_id: str) -> None:
    """Recompute a session's totals from its payments (repair, and data written around the
    service — the benchmark's history): `since` at the epoch and `used` every counted
    payment; the next authorization subtracts what has left each window."""
    amounts = (await conn.execute(select(Payment.amount).where(
        Payment.policy_session_id == policy_id, Payment.status.in_(_COUNTED)))).scalars()
    total = sum(amounts)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    await conn.execute(update(PolicySession).where(PolicySession.id == policy_id).values(
        **values({w: RunningTotal(epoch, total) for w in Window})))
