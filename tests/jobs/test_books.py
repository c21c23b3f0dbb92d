# ruff: noqa: F811  (the `paying` fixture is imported from test_reconcile)
"""Books == chain across the ways a request can die: cancelled, crashed after the hold,
crashed during an approval. Every retry answers the payment as it stands, money moves
once, and the chain decides every outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from tests.jobs.support import Clock
from tests.jobs.test_expiry import balance, stored_key
from tests.jobs.test_reconcile import Crash, Faulty, Paying, only_payment, paying  # noqa: F401
from tests.support import Api, funded_user, merchant_api
from zpay.chains.protocol import PreparedTransfer
from zpay.jobs.reconcile import RECHECK_AFTER
from zpay.jobs.scheduler import run_once
from zpay.services.context import AppContext
from zpay.store.models import ChainTransfer, IdempotencyRecord, Payment, SessionKey

USDC = 10**6


async def _count(ctx: AppContext, model: Any, *where: Any) -> int:
    async with ctx.db.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(model).where(*where))
                    ).scalar_one())


@dataclass
class Approving:
    api: Api
    key: dict[str, Any]
    user: Any
    faulty: Faulty
    clock: Clock

    async def submit_dying(self, ctx: AppContext, on_submit: Any) -> None:
        """Submit the approval through the service; `on_submit` raises Crash."""
        from zpay.services import approvals
        from zpay.services.auth import Principal, Role

        self.faulty.on_submit = on_submit
        row = await stored_key(ctx, self.key["id"])
        with pytest.raises(Crash):
            await approvals.submit_approval(ctx, Principal(row.merchant_id, Role.MERCHANT),
                                            self.key["id"], self.user.sign_approval(self.key))
        self.faulty.on_submit = None


@pytest.fixture
async def approving(ctx: AppContext, served: str) -> AsyncIterator[Approving]:
    """A pending 40 USDC key of a funded user, its chain behind a faulty adapter."""
    clock = ctx.clock = Clock()
    faulty = Faulty(ctx.chains.adapters["solana-local"])
    ctx.chains.adapters["solana-local"] = faulty  # type: ignore[assignment]
    try:
        async with httpx.AsyncClient(base_url=served, timeout=30) as http:
            api = await merchant_api(ctx, http)
            agent = await api.ok("POST", "/v1/agents", {"name": "a"})
            user = await funded_user(ctx, 100 * USDC)
            key = await api.ok("POST", "/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "40",
                "expires_in_seconds": 3600})
            yield Approving(api, key, user, faulty, clock)
    finally:
        ctx.chains.adapters["solana-local"] = faulty.inner


async def test_a_cancelled_request_never_frees_its_idempotency_key(
        ctx: AppContext, paying: Paying) -> None:
    """Defect: a CancelledError (server shutdown, client gone) after the hold released the
    key, and the SDK's retry paid a second time."""
    sent = asyncio.Event()

    async def send_then_get_cancelled(prepared: PreparedTransfer) -> None:
        await paying.faulty.inner.submit_transfer(prepared)
        sent.set()
        await asyncio.sleep(3600)  # the request waits on the chain... and is cancelled

    paying.faulty.on_submit = send_then_get_cancelled
    task = asyncio.create_task(paying.pay("30", "order-1"))
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    paying.faulty.on_submit = None

    retry = await paying.pay("30", "order-1")  # the SDK retries with the same key
    first = await only_payment(ctx)
    assert retry["id"] == first.id and retry["status"] == "submitted"
    assert await _count(ctx, Payment) == 1
    assert await _count(ctx, ChainTransfer, ChainTransfer.kind == "payment") == 1
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)
    again = await paying.pay("30", "order-1")
    assert (again["id"], again["status"]) == (first.id, "succeeded")
    assert await balance(ctx, paying.recipient) == 30 * USDC  # paid once, on chain
    row = await stored_key(ctx, paying.key["id"])
    assert (row.spent_amount, row.held_amount) == (30 * USDC, 0)


async def test_a_request_that_died_after_the_hold_is_answered_not_409(
        ctx: AppContext, paying: Paying) -> None:
    """Defect: a key whose request died stayed `in flight` for 24 h: every retry got 409
    whatever happened to the payment."""
    async def die(_prepared: PreparedTransfer) -> None:
        raise Crash

    paying.faulty.on_submit = die
    with pytest.raises(Crash):
        await paying.pay("12", "order-2")
    paying.faulty.on_submit = None
    retry = await paying.pay("12", "order-2")
    assert retry["status"] == "submitted" and retry["id"] == (await only_payment(ctx)).id
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)  # recorded, never sent: reconciliation sends exactly those bytes
    final = await paying.pay("12", "order-2")
    assert final["status"] == "succeeded"
    assert await balance(ctx, paying.recipient) == 12 * USDC


async def test_a_request_that_died_while_signing_left_nothing_and_a_retry_pays_once(
        ctx: AppContext, paying: Paying) -> None:
    async def die() -> None:
        raise Crash

    paying.faulty.on_prepare = die
    with pytest.raises(Crash):
        await paying.pay("5", "order-3")
    paying.faulty.on_prepare = None
    # Signing comes before the authorization's transaction: nothing was held or bound, so
    # the retry runs afresh, and pays once.
    assert await _count(ctx, IdempotencyRecord) == 0
    assert await _count(ctx, Payment) == 0
    retry = await paying.pay("5", "order-3")
    assert retry["status"] == "succeeded"
    again = await paying.pay("5", "order-3")
    assert (again["id"], again["status"]) == (retry["id"], "succeeded")
    assert await balance(ctx, paying.recipient) == 5 * USDC
    assert (await stored_key(ctx, paying.key["id"])).held_amount == 0


async def test_the_ledger_check_constraint_refuses_an_overdrawn_key(
        ctx: AppContext, paying: Paying) -> None:
    """Even a change that bypassed the domain ledger cannot be committed."""
    with pytest.raises(IntegrityError):
        async with ctx.db.transaction() as s:
            await s.execute(update(SessionKey).where(SessionKey.id == paying.key["id"])
                            .values(spent_amount=60 * USDC, held_amount=41 * USDC))
    row = await stored_key(ctx, paying.key["id"])
    assert (row.spent_amount, row.held_amount) == (0, 0)


async def test_an_approval_interrupted_by_a_crash_is_settled_from_the_chain(
        ctx: AppContext, approving: Approving) -> None:
    """Defect: an approval left `submitting` by a crash was never recovered."""
    api, key = approving.api, approving.key

    async def send_then_die(prepared: PreparedTransfer) -> None:
        await approving.faulty.inner.submit_transfer(prepared)
        raise Crash

    await approving.submit_dying(ctx, send_then_die)
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert status["status"] == "pending_approval"  # the books do not guess
    approving.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert (status["status"], status["funded_amount"]) == ("active", "40.000000")
    assert await balance(ctx, key["session_key_address"]) == 40 * USDC


async def test_an_interrupted_approval_that_lapsed_can_be_renewed(
        ctx: AppContext, approving: Approving) -> None:
    api, key, user = approving.api, approving.key, approving.user

    async def die(_prepared: PreparedTransfer) -> None:
        raise Crash  # recorded, never sent

    await approving.submit_dying(ctx, die)
    refused = await api.post(f"/v1/session-keys/{key['id']}/approval/renew")
    assert refused.json()["code"] == "approval_not_renewable"  # it may still land
    approving.faulty.inner.advance_blockhash()  # type: ignore[attr-defined]
    approving.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)  # unknown and lapsed: it can never land
    renewed = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval/renew")
    status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval",
                          user.sign_approval({**key, **renewed}))
    assert (status["status"], status["funded_amount"]) == ("active", "40.000000")
    assert await balance(ctx, user.address) == 60 * USDC  # debited exactly once


async def test_a_refund_is_booked_from_the_chain_never_guessed(
        ctx: AppContext, paying: Paying) -> None:
    """Defect: an empty session wallet was booked as `refunded` by an "earlier sweep"
    guess. Here the wallet is drained behind zpay's back: nothing is booked, the audit
    is left to report the difference."""
    from zpay.jobs.refunds import run_refunds
    from zpay.services import session_keys
    from zpay.services.session_keys import load_secret

    await session_keys.revoke(ctx, paying.merchant, paying.key["id"])
    adapter = paying.faulty.inner
    async with ctx.db.sessions() as s:
        row = await s.get(SessionKey, paying.key["id"])
        assert row is not None
        secret = await load_secret(ctx, s, row)
    drained = await adapter.prepare_transfer(
        secret=secret, source=row.address, destination=paying.recipient,
        token=adapter.token("USDC"), amount_base_units=100 * USDC, reference_seed="outside")
    await adapter.submit_transfer(drained)
    assert await balance(ctx, row.address) == 0
    await run_refunds(ctx)
    row = await stored_key(ctx, paying.key["id"])
    assert (row.refunded_amount, row.refund_status, row.refund_tx_id) == (0, "skipped", None)


async def test_past_the_deadline_a_payment_answers_submitted_and_reconciles(
        ctx: AppContext, paying: Paying) -> None:
    """A chain that stops answering holds a request at most `confirm_timeout_s`; the
    payment is answered `submitted` and the chain settles it later."""
    import dataclasses

    ctx.settings = dataclasses.replace(ctx.settings, confirm_timeout_s=0.5)
    frozen = asyncio.Event()

    async def send_then_freeze(prepared: PreparedTransfer) -> None:
        await paying.faulty.inner.submit_transfer(prepared)
        await frozen.wait()  # the node never answers again

    paying.faulty.on_submit = send_then_freeze
    body = await paying.pay("7", "order-4")
    assert body["status"] == "submitted"
    paying.faulty.on_submit = None
    paying.clock.advance(seconds=RECHECK_AFTER.total_seconds())
    await run_once(ctx)
    assert (await paying.pay("7", "order-4"))["status"] == "succeeded"
    assert await balance(ctx, paying.recipient) == 7 * USDC


async def test_chain_prose_and_rpc_urls_never_reach_a_response(
        ctx: AppContext, served: str) -> None:
    from zpay.chains.protocol import ChainUnavailable

    faulty = Faulty(ctx.chains.adapters["solana-local"])

    async def leaky(**_kwargs: Any) -> PreparedTransfer:
        raise ChainUnavailable("getLatestBlockhash: ClientConnectorError: Cannot connect to "
                               "https://solana-mainnet.example.com/v2/SECRET-API-KEY-123")

    faulty.prepare_approval = leaky  # type: ignore[method-assign]
    ctx.chains.adapters["solana-local"] = faulty  # type: ignore[assignment]
    try:
        async with httpx.AsyncClient(base_url=served, timeout=30) as http:
            api = await merchant_api(ctx, http)
            agent = await api.ok("POST", "/v1/agents", {"name": "a"})
            user = await funded_user(ctx, 100 * USDC)
            key = await api.ok("POST", "/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "40",
                "expires_in_seconds": 3600})
            resp = await api.post(f"/v1/session-keys/{key['id']}/approval",
                                  user.sign_approval(key))
        assert resp.status_code == 503 and resp.json()["code"] == "chain_unavailable"
        assert "SECRET" not in resp.text and "example.com" not in resp.text
    finally:
        ctx.chains.adapters["solana-local"] = faulty.inner


async def test_an_approval_that_lands_after_its_key_expired_is_refunded(
        ctx: AppContext, approving: Approving) -> None:
    """Killed during the approval; the key expires before reconciliation looks: the chain
    says the funds arrived, so they are booked — and go straight back to the user."""
    api, key, user = approving.api, approving.key, approving.user

    async def send_then_die(prepared: PreparedTransfer) -> None:
        await approving.faulty.inner.submit_transfer(prepared)
        raise Crash

    await approving.submit_dying(ctx, send_then_die)
    assert await balance(ctx, user.address) == 60 * USDC  # on chain, not in the books
    approving.clock.advance(hours=2)  # past the key's expiry
    await run_once(ctx)  # expire, reconcile (funds booked), refund
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert (status["status"], status["funded_amount"], status["refunded_amount"]) == (
        "expired", "40.000000", "40.000000")
    assert (status["refund_status"], status["remaining_amount"]) == ("done", "0.000000")
    assert await balance(ctx, user.address) == 100 * USDC
    assert await balance(ctx, key["session_key_address"]) == 0
