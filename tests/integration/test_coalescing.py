"""Coalescing stays exact: concurrent authorizations share one transaction (each key
locked once, decided in arrival order; keys linked to one policy session share its
windows within the batch), and the sum of what succeeds is exactly what the balances and
the linked windows allow — in one process, and across two processes (two contexts with
their own pools and coalescers), on both databases."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from decimal import Decimal

import pytest
from solders.keypair import Keypair
from sqlalchemy import select, text

from tests.integration.test_windows import linked_key
from tests.support import funded_user
from zpay.chains.protocol import TransferState, TransferStatus
from zpay.domain.errors import PaymentRefused
from zpay.services import approvals, payments, session_keys, sessions
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.store.database import Database
from zpay.store.models import Event, PaymentAttempt, SessionKey

USDC = 10**6


async def _held_not_sent(ctx: AppContext, agent: Principal, key_id: str, amount: str,
                         to: str | None = None) -> payments._Authorized:
    """A payment authorized (held, its transfer signed and recorded), not sent."""
    authorized = await payments.authorize_signed(
        ctx, agent, payments.PaymentRequest(session_key_id=key_id, amount=amount,
                                            recipient=to or str(Keypair().pubkey())),
        None, f"held-{amount}", payments.PaymentForm())
    assert isinstance(authorized, payments._Authorized)
    return authorized


def _other_process(ctx: AppContext, database_url: str) -> AppContext:
    """Another process's context: its own pools and coalescer, the same chain."""
    return AppContext(settings=ctx.settings, db=Database(database_url), custody=ctx.custody,
                      chains=ctx.chains, clock=ctx.clock)


async def _pay_64(contexts: list[AppContext], agent: Principal, key_id: str,
                  amounts: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    to = str(Keypair().pubkey())

    async def pay(i: int, amount: int) -> tuple[int, str]:
        ctx = contexts[i % len(contexts)]
        try:
            body = (await payments.create_payment(ctx, agent, payments.PaymentRequest(
                session_key_id=key_id, amount=str(amount), recipient=to),
                f"order-{i}")).body
        except PaymentRefused as refusal:
            return amount, refusal.code
        return amount, body["status"]

    results = await asyncio.gather(*(pay(i, a) for i, a in enumerate(amounts)))
    paid = [a for a, status in results if status == "succeeded"]
    refused = [(a, status) for a, status in results if status != "succeeded"]
    balance = await contexts[0].chains.get("solana-local").balance(
        to, contexts[0].chains.get("solana-local").token("USDC"))
    assert balance == sum(paid) * USDC  # books == chain
    return paid, refused


async def _check_exact(ctx: AppContext, agent: Principal, key_id: str, policy_id: str,
                       paid: list[int], refused: list[tuple[int, str]], *, funds: int,
                       day: int) -> None:
    spent = sum(paid)
    assert spent <= min(funds, day)
    # Capacity only shrank during the run (nothing was released): every refused amount
    # was more than what was left when it was decided, so more than what is left now.
    left = min(funds, day) - spent
    assert refused and all(amount > left for amount, _ in refused), (left, refused)
    assert {code for _, code in refused} <= {"daily_limit", "insufficient_session_balance"}
    status = await sessions.get_session(ctx, agent, policy_id)
    assert Decimal(status["windows"]["day"]["used"]) == spent
    async with ctx.db.sessions() as s:
        key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id))).scalar_one()
        assert (key.spent_amount, key.held_amount) == (spent * USDC, 0)
        decided_at = (await s.execute(select(PaymentAttempt.created_at).where(
            PaymentAttempt.session_key_id == key_id))).scalars().all()
    assert len(decided_at) == 64
    # Coalesced: several authorizations were decided in one transaction (one `now`).
    assert len(set(decided_at)) < 64


@pytest.mark.parametrize(("funds", "day"), [(100, 60), (100, 1000)])
async def test_64_concurrent_payments_on_one_key_are_exact(ctx: AppContext, funds: int,
                                                            day: int) -> None:
    agent, key_id, policy_id = await linked_key(ctx, funds=str(funds), day=str(day),
                                                week="100000", month="100000")
    rng = random.Random(f"{funds}-{day}")
    amounts = [rng.randint(1, 9) for _ in range(64)]
    paid, refused = await _pay_64([ctx], agent, key_id, amounts)
    await _check_exact(ctx, agent, key_id, policy_id, paid, refused, funds=funds, day=day)


async def test_64_concurrent_payments_from_two_processes_are_exact(
        ctx: AppContext, database_url: str) -> None:
    """Two processes: on PostgreSQL the key's row lock orders them; on SQLite the file's
    write lock does."""
    other = _other_process(ctx, database_url)
    try:
        agent, key_id, policy_id = await linked_key(ctx, funds="100", day="60",
                                                    week="100000", month="100000")
        rng = random.Random("two")
        paid, refused = await _pay_64([ctx, other], agent, key_id,
                                      [rng.randint(1, 9) for _ in range(64)])
        await _check_exact(ctx, agent, key_id, policy_id, paid, refused, funds=100, day=60)
    finally:
        await other.db.dispose()


async def test_a_transfer_settled_twice_in_one_batch_is_captured_once(ctx: AppContext) -> None:
    """A settlement batch writes its payments at the end; one payment met twice (the
    request and reconciliation answering at once) is one instance whose two writes are
    one, and the money moves once."""
    agent, key_id, policy_id = await linked_key(ctx, funds="10", day="10", week="100",
                                                month="100")
    authorized = await _held_not_sent(ctx, agent, key_id, "3")
    landed = TransferStatus(TransferState.CONFIRMED, authorized.prepared.reference)
    views = await payments._settle_batch(ctx, [(key_id, authorized.transfer_id, landed)] * 2)
    assert [v["status"] for v in views] == ["succeeded", "succeeded"]
    async with ctx.db.sessions() as s:
        key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id))).scalar_one()
        events = (await s.execute(select(Event.type).where(
            Event.object_id == authorized.payment.id))).scalars().all()
    assert (key.spent_amount, key.held_amount, key.transaction_count) == (3 * USDC, 0, 1)
    assert events.count("payment.succeeded") == 1
    status = await sessions.get_session(ctx, agent, policy_id)
    assert Decimal(status["windows"]["day"]["used"]) == 3


@pytest.mark.parametrize("transactions", [1, 4])
async def test_concurrent_payments_on_keys_sharing_a_session_are_exact(
        ctx: AppContext, transactions: int) -> None:
    """Four keys of one agent linked to ONE policy session, 64 concurrent payments spread
    over them: batches hold several keys at once, the session's day window is shared
    within a batch, and every key's balance and the window come out exact — on the books
    and on the chain. With one coalesced transaction at a time (the default) and with
    four (`ZPAY_HOT_PATH_TRANSACTIONS`), none sharing a key or the session."""
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(
        ctx.settings, hot_path_transactions=transactions))
    agent, first_key, policy_id = await linked_key(ctx, funds="25", day="60", week="100000",
                                                   month="100000")
    merchant = Principal(agent.merchant_id, Role.MERCHANT)
    key_ids = [first_key]
    for _ in range(3):
        user = await funded_user(ctx, 1000 * USDC)
        key = await session_keys.create_session_key(
            ctx, merchant, session_keys.SessionKeyRequest(
                agent_id=agent.agent_id, user_wallet=user.address, max_amount="25",
                expires_in_seconds=86400, session_id=policy_id))
        await approvals.submit_approval(ctx, merchant, key["id"], user.sign_approval(key))
        key_ids.append(key["id"])
    to = str(Keypair().pubkey())
    rng = random.Random("shared")
    orders = [(rng.choice(key_ids), rng.randint(1, 9)) for _ in range(64)]

    async def pay(i: int, key_id: str, amount: int) -> str:
        try:
            return (await payments.create_payment(ctx, agent, payments.PaymentRequest(
                session_key_id=key_id, amount=str(amount), recipient=to),
                f"shared-{i}")).body["status"]
        except PaymentRefused as refusal:
            return refusal.code

    results = await asyncio.gather(*(pay(i, k, a) for i, (k, a) in enumerate(orders)))
    spent = {k: sum(a for (key, a), r in zip(orders, results, strict=True)
                    if key == k and r == "succeeded") for k in key_ids}
    total = sum(spent.values())
    assert 0 < total <= 60 and all(s <= 25 for s in spent.values())
    # Capacity only shrank: each refusal asked for more than its key or the day had left.
    for (key_id, amount), result in zip(orders, results, strict=True):
        if result == "daily_limit":
            assert amount > 60 - total
        elif result == "insufficient_session_balance":
            assert amount > 25 - spent[key_id]
        else:
            assert result == "succeeded"
    status = await sessions.get_session(ctx, agent, policy_id)
    assert Decimal(status["windows"]["day"]["used"]) == total
    chain = ctx.chains.get("solana-local")
    token = chain.token("USDC")
    assert await chain.balance(to, token) == total * USDC  # books == chain
    async with ctx.db.sessions() as s:
        keys = {k.id: k for k in (await s.execute(select(SessionKey).where(
            SessionKey.id.in_(key_ids)))).scalars()}
        attempts = (await s.execute(select(PaymentAttempt.created_at,
                                           PaymentAttempt.session_key_id).where(
            PaymentAttempt.session_key_id.in_(key_ids)))).all()
    for key_id in key_ids:
        assert (keys[key_id].spent_amount, keys[key_id].held_amount) == (
            spent[key_id] * USDC, 0)
        assert await chain.balance(keys[key_id].address, token) == (25 - spent[key_id]) * USDC
    # Batched across keys: some transaction (one `now`) decided payments of several keys.
    keys_at: dict[object, set[str]] = {}
    for at, key_id in attempts:
        keys_at.setdefault(at, set()).add(key_id)
    assert len(attempts) == 64 and max(len(k) for k in keys_at.values()) > 1


async def _waiting_for_locks(db: Database) -> int:
    async with db.sessions() as s:
        return (await s.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"))).scalar_one()


async def test_a_settlement_that_waited_for_the_key_sees_the_transfer_concluded(
        ctx: AppContext, database_url: str) -> None:
    """Two processes answer one transfer: one says it failed, the other (waiting for the
    key's lock meanwhile) that it landed. The first to take the lock concludes it; the
    second reads the transfer as concluded — not as it was when its statement began —
    and leaves the payment released (settlements lock the key, the payment and the
    transfer in one statement: every row it reads is one it locks)."""
    other = _other_process(ctx, database_url)
    holder = Database(database_url)
    try:
        agent, key_id, policy_id = await linked_key(ctx, funds="10", day="10", week="100",
                                                    month="100")
        authorized = await _held_not_sent(ctx, agent, key_id, "3")
        reference = authorized.prepared.reference
        failed = TransferStatus(TransferState.FAILED, reference, error="blockhash_expired")
        landed = TransferStatus(TransferState.CONFIRMED, reference)
        if ctx.db.dialect == "postgresql":
            async with holder.transaction() as s:  # the key's lock, held by a third party
                await s.execute(select(SessionKey.id).where(SessionKey.id == key_id)
                                .with_for_update())
                first = asyncio.create_task(
                    payments.settle(ctx, authorized.transfer_id, failed))
                while await _waiting_for_locks(holder) < 1:
                    await asyncio.sleep(0.01)
                second = asyncio.create_task(
                    payments.settle(other, authorized.transfer_id, landed))
                while await _waiting_for_locks(holder) < 2:
                    await asyncio.sleep(0.01)
            views = [await first, await second]
        else:  # one writer at a time: the same two answers, one after the other
            views = [await payments.settle(ctx, authorized.transfer_id, failed),
                     await payments.settle(other, authorized.transfer_id, landed)]
        assert [v["status"] for v in views] == ["failed", "failed"]
        async with ctx.db.sessions() as s:
            key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id))
                   ).scalar_one()
            events = (await s.execute(select(Event.type).where(
                Event.object_id == authorized.payment.id))).scalars().all()
        assert (key.spent_amount, key.held_amount, key.transaction_count) == (0, 0, 0)
        assert events == ["payment.failed"]
        status = await sessions.get_session(ctx, agent, policy_id)
        assert Decimal(status["windows"]["day"]["used"]) == 0
    finally:
        await other.db.dispose()
        await holder.dispose()


async def test_one_idempotency_key_sent_to_two_processes_waiting_on_the_key_pays_once(
        ctx: AppContext, database_url: str) -> None:
    """The same request (one Idempotency-Key) reaches two processes while a third party
    holds the key's lock. Each reads the key's records with its lock, in one statement
    (PostgreSQL), as they were when that statement began: the second never saw the first
    one's record. Its own binding is refused by the unique index, it reads again, and it
    answers the first one's payment: one payment, one transfer, exact books."""
    other = _other_process(ctx, database_url)
    holder = Database(database_url)
    try:
        agent, key_id, _policy_id = await linked_key(ctx, funds="10", day="10", week="100",
                                                     month="100")
        to = str(Keypair().pubkey())
        request = payments.PaymentRequest(session_key_id=key_id, amount="3", recipient=to)

        def pay(context: AppContext) -> asyncio.Task[payments.PaymentOutcome]:
            return asyncio.create_task(payments.create_payment(context, agent, request,
                                                               "order-once"))

        if ctx.db.dialect == "postgresql":
            async with holder.transaction() as s:
                await s.execute(select(SessionKey.id).where(SessionKey.id == key_id)
                                .with_for_update())
                first = pay(ctx)
                while await _waiting_for_locks(holder) < 1:
                    await asyncio.sleep(0.01)
                second = pay(other)
                while await _waiting_for_locks(holder) < 2:
                    await asyncio.sleep(0.01)
            outcomes = [await first, await second]
        else:  # one writer at a time
            outcomes = list(await asyncio.gather(pay(ctx), pay(other)))
        assert {o.body["id"] for o in outcomes} == {outcomes[0].body["id"]}
        [paid] = [o for o in outcomes if not o.replayed]
        [replayed] = [o for o in outcomes if o.replayed]
        assert paid.body["status"] == "succeeded"
        # The replay answers the payment as it stood when it was read (its transfer may
        # have been in flight then).
        assert replayed.body["status"] in ("submitted", "succeeded")
        async with ctx.db.sessions() as s:
            key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id))
                   ).scalar_one()
        assert (key.spent_amount, key.held_amount, key.transaction_count) == (3 * USDC, 0, 1)
        chain = ctx.chains.get("solana-local")
        assert await chain.balance(to, chain.token("USDC")) == 3 * USDC  # books == chain
    finally:
        await other.db.dispose()
        await holder.dispose()


async def test_a_release_and_an_authorization_on_one_session_in_one_transaction_are_exact(
        ctx: AppContext) -> None:
    """One coalesced transaction releases a payment of a key linked to a policy session
    and authorizes another on it: the release moves the session's windows (written at
    once) before the authorization reads them, and every row goes out exact."""
    agent, key_id, policy_id = await linked_key(ctx, funds="10", day="10", week="100",
                                                month="100")
    to = str(Keypair().pubkey())
    first = await _held_not_sent(ctx, agent, key_id, "3", to)
    second = await payments._sign(ctx, agent, payments.PaymentRequest(
        session_key_id=key_id, amount="8", recipient=to), None, "second",
        payments.PaymentForm())
    failed = TransferStatus(TransferState.FAILED, first.prepared.reference,
                            error="blockhash_expired")
    released, authorized = await payments._turn(ctx, [
        payments._Settlement(key_id, first.transfer_id, failed), second])
    # 8 fits only once the 3 is released (10 a day, 10 funded).
    assert isinstance(released, dict) and released["status"] == "failed"
    assert isinstance(authorized, payments._Authorized)
    status = await sessions.get_session(ctx, agent, policy_id)
    assert Decimal(status["windows"]["day"]["used"]) == 8
    async with ctx.db.sessions() as s:
        key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id))).scalar_one()
    assert (key.spent_amount, key.held_amount) == (0, 8 * USDC)
