"""The policy windows through the real payment path, on both databases: every decision and
every figure equals a brute-force recount of the payments table, across a DST change in
calendar mode, in rolling mode, and after releases of failed payments; an upgraded
database (totals carried from the epoch) is exact too."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from solders.keypair import Keypair
from sqlalchemy import select

from tests.jobs.support import Clock
from tests.jobs.test_reconcile import Faulty
from tests.support import funded_user
from zpay.chains.protocol import ChainError, PreparedTransfer
from zpay.domain.errors import PaymentRefused
from zpay.domain.lifecycle import COUNTED
from zpay.domain.windows import Spend, Window, WindowMode, WindowSpec, window_usage
from zpay.services import agents, approvals, payments, session_keys, sessions
from zpay.services import windows as policy_windows
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant
from zpay.store.models import Payment, PolicySession

USDC = 10**6
LIMITS = {Window.DAY: 40 * USDC, Window.WEEK: 120 * USDC, Window.MONTH: 300 * USDC}


async def linked_key(ctx: AppContext, mode: str = "rolling", zone: str = "UTC", *,
                     funds: str = "1000", day: str = "40", week: str = "120",
                     month: str = "300") -> tuple[Principal, str, str]:
    """An agent's funded key linked to a policy session: (agent principal, key, session)."""
    merchant = Principal((await create_merchant(ctx, "m")).merchant_id, Role.MERCHANT)
    agent = await agents.create_agent(ctx, merchant, "a")
    session = await sessions.create_session(ctx, merchant, sessions.SessionRequest(
        agent_id=agent["id"], max_per_day=day, max_per_week=week, max_per_month=month,
        window_mode=mode, timezone=zone))
    user = await funded_user(ctx, 1000 * USDC)
    key = await session_keys.create_session_key(ctx, merchant, session_keys.SessionKeyRequest(
        agent_id=agent["id"], user_wallet=user.address, max_amount=funds,
        expires_in_seconds=300 * 86400, session_id=session["id"]))
    await approvals.submit_approval(ctx, merchant, key["id"], user.sign_approval(key))
    return Principal(merchant.merchant_id, Role.AGENT, agent_id=agent["id"]), key["id"], \
        session["id"]


async def _recount(ctx: AppContext, policy_id: str, spec: WindowSpec,
                   now: datetime) -> dict[Window, int]:
    async with ctx.db.sessions() as s:
        rows = (await s.execute(select(Payment.created_at, Payment.amount).where(
            Payment.policy_session_id == policy_id,
            Payment.status.in_([c.value for c in COUNTED])))).all()
    usage = window_usage(spec, [Spend(at, amount) for at, amount in rows], now)
    return {w: u.used for w, u in usage.items()}


async def _shown(ctx: AppContext, agent: Principal, policy_id: str) -> dict[Window, int]:
    body = await sessions.get_session(ctx, agent, policy_id)
    return {w: int(Decimal(body["windows"][w.value]["used"]) * USDC) for w in Window}


@pytest.mark.parametrize(("mode", "zone", "start"), [
    # New York springs forward on Sunday 2026-03-08: a 23-hour calendar day.
    ("calendar", "America/New_York", datetime(2026, 3, 6, 20, 0, tzinfo=UTC)),
    ("rolling", "UTC", datetime(2026, 3, 6, 20, 0, tzinfo=UTC)),
])
async def test_every_decision_matches_a_recount(ctx: AppContext, mode: str, zone: str,
                                                start: datetime) -> None:
    clock = ctx.clock = Clock(start)
    agent, key_id, policy_id = await linked_key(ctx, mode, zone)
    spec = WindowSpec(WindowMode(mode), zone)
    faulty = Faulty(ctx.chains.adapters["solana-local"])
    ctx.chains.adapters["solana-local"] = faulty  # type: ignore[assignment]
    rng = random.Random(f"{mode}-{zone}")
    to = str(Keypair().pubkey())
    outcomes = {"paid": 0, "refused": 0, "failed": 0}
    try:
        for _ in range(36):
            clock.advance(minutes=rng.choice([5, 45, 190, 600, 1300]))
            amount = rng.randint(1, 25)
            fails = rng.random() < 0.25

            async def refused_by_the_node(_prepared: PreparedTransfer) -> None:
                raise ChainError("the node refused it", code="transfer_refused")

            faulty.on_submit = refused_by_the_node if fails else None
            used = await _recount(ctx, policy_id, spec, clock.now)
            fits = all(used[w] + amount * USDC <= LIMITS[w] for w in Window)
            try:
                body = (await payments.create_payment(ctx, agent, payments.PaymentRequest(
                    session_key_id=key_id, amount=str(amount), recipient=to))).body
            except PaymentRefused as refusal:
                assert not fits, (refusal.code, used, amount)
                outcomes["refused"] += 1
            else:
                assert fits, (used, amount)
                assert body["status"] == ("failed" if fails else "succeeded")
                outcomes["failed" if fails else "paid"] += 1
            assert await _shown(ctx, agent, policy_id) == await _recount(
                ctx, policy_id, spec, clock.now)
    finally:
        ctx.chains.adapters["solana-local"] = faulty.inner
    assert all(outcomes.values()), outcomes  # the history had all three kinds


async def test_an_upgraded_session_is_exact_from_its_first_payment(ctx: AppContext) -> None:
    """What the migration leaves (since = the epoch, used = every counted payment): the
    first authorization subtracts what has left each window."""
    clock = ctx.clock = Clock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    agent, key_id, policy_id = await linked_key(ctx, "rolling", "UTC")
    to = str(Keypair().pubkey())

    async def pay(amount: str) -> dict[str, Any]:
        return (await payments.create_payment(ctx, agent, payments.PaymentRequest(
            session_key_id=key_id, amount=amount, recipient=to))).body

    for hours in (0, 20, 30, 24 * 8):
        clock.set(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
        clock.advance(hours=hours)
        assert (await pay("10"))["status"] == "succeeded"
    async with ctx.db.transaction() as s:
        await policy_windows.rebuild(s, policy_id)
        row = (await s.execute(select(PolicySession).where(PolicySession.id == policy_id))
               ).scalar_one()
        assert (row.day_used, row.month_used) == (40 * USDC, 40 * USDC)
    clock.advance(hours=1)
    spec = WindowSpec(WindowMode.ROLLING, "UTC")
    assert (await pay("5"))["status"] == "succeeded"
    assert await _shown(ctx, agent, policy_id) == await _recount(ctx, policy_id, spec,
                                                                 clock.now)
    async with ctx.db.sessions() as s:
        row = (await s.execute(select(PolicySession).where(PolicySession.id == policy_id))
               ).scalar_one()
    assert (row.day_used, row.week_used, row.month_used) == (15 * USDC, 25 * USDC, 45 * USDC)
