"""Reconciliation after a crash at each step of a payment: books end equal to the chain.

The crash is a BaseException raised from inside the chain adapter, so nothing after
that point of `create_payment` runs, as with a killed process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair
from sqlalchemy import select

from tests.jobs.support import Clock
from tests.jobs.test_expiry import balance, stored_key
from tests.support import active_key, merchant_api
from zpay.chains.protocol import ChainAdapter, PreparedTransfer
from zpay.domain.errors import PaymentRefused
from zpay.jobs.reconcile import RECHECK_AFTER, authorized_grace
from zpay.jobs.scheduler import run_once
from zpay.services import payments, session_keys
from zpay.services.auth import Principal, Role
from zpay.services.books import book, ledger_of
from zpay.services.context import AppContext
from zpay.store.models import Payment, SessionKey


class Crash(BaseException):
    pass


class Faulty:
    """The real adapter, with hooks run after preparing and instead of submitting."""

    def __init__(self, inner: ChainAdapter) -> None:
        self.inner = inner
        self.on_prepare: Callable[[], Awaitable[None]] | None = None
        self.on_submit: Callable[[PreparedTransfer], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def prepare_transfer(self, **kwargs: Any) -> PreparedTransfer:
        prepared = await self.inner.prepare_transfer(**kwargs)
        if self.on_prepare is not None:
            await self.on_prepare()
        return prepared

    async def submit_transfer(self, prepared: PreparedTransfer) -> None:
        if self.on_submit is None:
            await self.inner.submit_transfer(prepared)
        else:
            await self.on_submit(prepared)


@dataclass
class Paying:
    ctx: AppContext
    merchant: Principal
    pay: Callable[..., Awaitable[dict[str, Any]]]  # (amount, idempotency_key=None); Crash
    key: dict[str, Any]
    recipient: str
    faulty: Faulty
    clock: Clock


@pytest.fixture
async def paying(ctx: AppContext, served: str) -> AsyncIterator[Paying]:
    """An active 100 USDC key whose payments go through the faulty adapter."""
    ctx.clock = clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _user = await active_key(api, ctx, max_amount="100")
    row = await stored_key(ctx, key["id"])
    principal = Principal(row.merchant_id, Role.AGENT, agent_id=agent["id"])
    faulty = Faulty(ctx.chains.adapters["solana-local"])
    ctx.chains.adapters["solana-local"] = faulty  # type: ignore[assignment]
    recipient = str(Keypair().pubkey())

    async def pay(amount: str, idempotency_key: str | None = None) -> dict[str, Any]:
        return (await payments.create_payment(ctx, principal, payments.PaymentRequest(
            session_key_id=key["id"], amount=amount, recipient=recipient),
            idempotency_key)).body

    try:
        yield Paying(ctx, Principal(row.merchant_id, Role.MERCHANT), pay, key, recipient, faulty,
                     clock)
    finally:
        ctx.chains.adapters["solana-local"] = faulty.inner


async def only_payment(ctx: AppContext) -> Payment:
    async with ctx.db.sessions() as s:
        return (await s.execute(select(Payment))).scalar_one()


async def test_sent_then_crashed_is_captured(ctx: AppContext, paying: Paying) -> None:
    async def send_then_die(prepared: PreparedTransfer) -> None:
        await paying.faulty.inner.submit_transfer(prepared)
        raise Crash

    paying.faulty.on_submit = send_then_die
    with pytest.raises(Crash):
        await paying.pay("30")
    assert (await only_payment(ctx)).status == "submitted"
    assert (await run_once(ctx)).reconciled == 0  # too young: create_payment may still be on it
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    assert (await run_once(ctx)).reconciled == 1
    payment, row = await only_payment(ctx), await stored_key(ctx, paying.key["id"])
    assert (payment.status, payment.tx_id) == ("succeeded", payment.tx_reference)
    assert (row.spent_amount, row.held_amount, row.transaction_count) == (30 * 10**6, 0, 1)
    assert await balance(ctx, paying.recipient) == 30 * 10**6
    assert await balance(ctx, paying.key["session_key_address"]) == 70 * 10**6


async def test_a_crash_while_signing_leaves_nothing_and_a_retry_pays_once(
        ctx: AppContext, paying: Paying) -> None:
    """The transfer is signed before anything is written: a process that dies while
    signing leaves no payment, no hold, no Idempotency-Key binding."""
    async def die() -> None:
        raise Crash

    paying.faulty.on_prepare = die
    with pytest.raises(Crash):
        await paying.pay("30", "order-1")
    paying.faulty.on_prepare = None
    async with ctx.db.sessions() as s:
        assert (await s.execute(select(Payment))).first() is None
    assert (await stored_key(ctx, paying.key["id"])).held_amount == 0
    body = await paying.pay("30", "order-1")
    assert body["status"] == "succeeded"
    assert await balance(ctx, paying.recipient) == 30 * 10**6


async def test_never_submitted_is_released_after_the_grace(ctx: AppContext,
                                                           paying: Paying) -> None:
    """An `authorized` payment without a recorded transfer (left by a version that held
    before signing, killed in between) is released once the grace has passed."""
    row = await stored_key(ctx, paying.key["id"])
    async with ctx.db.transaction() as s:
        key = await s.get(SessionKey, row.id)
        assert key is not None
        book(key, ledger_of(key).hold(30 * 10**6))
        now = ctx.now()
        s.add(Payment(id="pay_legacy", merchant_id=key.merchant_id, session_key_id=key.id,
                      agent_id=key.agent_id, policy_session_id=None, chain=key.chain,
                      amount=30 * 10**6, recipient=paying.recipient, description=None,
                      status="authorized", tx_reference=None, tx_id=None, failure_code=None,
                      idempotency_key=None, created_at=now, updated_at=now))
    paying.clock.advance(seconds=authorized_grace(ctx.settings).total_seconds() - 1)
    assert (await run_once(ctx)).reconciled == 0
    paying.clock.advance(seconds=1)
    assert (await run_once(ctx)).reconciled == 1
    payment, row = await only_payment(ctx), await stored_key(ctx, paying.key["id"])
    assert (payment.status, payment.failure_code) == ("failed", "transfer_never_submitted")
    assert (row.spent_amount, row.held_amount) == (0, 0)
    assert await balance(ctx, paying.key["session_key_address"]) == 100 * 10**6


async def _record_then_die(paying: Paying) -> None:
    async def die(_prepared: PreparedTransfer) -> None:
        raise Crash

    paying.faulty.on_submit = die
    with pytest.raises(Crash):
        await paying.pay("30")
    paying.faulty.on_submit = None
    assert (await only_payment(paying.ctx)).status == "submitted"


async def test_recorded_but_never_sent_is_sent_again_and_captured(
        ctx: AppContext, paying: Paying) -> None:
    await _record_then_die(paying)
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    assert (await run_once(ctx)).reconciled == 1
    payment, row = await only_payment(ctx), await stored_key(ctx, paying.key["id"])
    assert (payment.status, payment.tx_id) == ("succeeded", payment.tx_reference)
    assert (row.spent_amount, row.held_amount) == (30 * 10**6, 0)
    assert await balance(ctx, paying.recipient) == 30 * 10**6
    assert await balance(ctx, paying.key["session_key_address"]) == 70 * 10**6


async def test_recorded_but_never_sent_on_a_revoked_key_is_released_not_sent(
        ctx: AppContext, paying: Paying) -> None:
    await _record_then_die(paying)
    await session_keys.revoke(ctx, paying.merchant, paying.key["id"])
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)
    payment = await only_payment(ctx)
    # Not sent (the key is revoked) and still valid: the chain cannot tell yet, so nothing
    # is decided; no wall-clock grace either.
    assert payment.status == "submitted"
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    assert (await run_once(ctx)).reconciled == 0
    # Its blockhash lapses (what ~60 s do on a real chain): now it provably never lands.
    paying.faulty.inner.advance_blockhash()  # type: ignore[attr-defined]
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    assert (await run_once(ctx)).reconciled == 1
    payment = await only_payment(ctx)
    assert payment.status == "failed"
    row = await stored_key(ctx, paying.key["id"])
    assert (row.spent_amount, row.held_amount) == (0, 0)
    assert await balance(ctx, paying.recipient) == 0
    # in the same tick, nothing held any more: the refund went out
    row = await stored_key(ctx, paying.key["id"])
    assert (row.refund_status, row.refunded_amount) == ("done", 100 * 10**6)
    assert await balance(ctx, paying.key["session_key_address"]) == 0


async def test_a_payment_outrun_while_being_signed_is_refused_and_never_sent(
        ctx: AppContext, paying: Paying) -> None:
    """Signing happens before the key's lock: another payment that takes the balance
    meanwhile wins, this one is refused under the lock and its signed transfer dropped."""
    async def another_payment_lands_first() -> None:
        paying.faulty.on_prepare = None
        assert (await paying.pay("80"))["status"] == "succeeded"

    paying.faulty.on_prepare = another_payment_lands_first
    with pytest.raises(PaymentRefused) as refused:
        await paying.pay("30")
    assert refused.value.code == "insufficient_session_balance"
    row = await stored_key(ctx, paying.key["id"])
    assert (row.spent_amount, row.held_amount) == (80 * 10**6, 0)
    assert await balance(ctx, paying.recipient) == 80 * 10**6
    assert await balance(ctx, paying.key["session_key_address"]) == 20 * 10**6
