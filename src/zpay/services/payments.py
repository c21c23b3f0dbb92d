"""Payments from a session key: authorize (hold) → sign, record, send → capture or release.

Books follow the chain: the hold and the Idempotency-Key are written in ONE transaction;
the signed transfer is recorded (services.transfers) before it is sent; a payment is
captured when the chain shows its transfer landed and released only when the chain proves
it never can. Anything unanswered within `confirm_timeout_s` is answered `submitted`
(202) and finished by reconciliation, in any process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import ChainError, TransferState, TransferStatus
from zpay.domain.errors import Conflict, NotFound, PaymentRefused, ZpayError
from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.domain.money import parse_amount
from zpay.domain.policy import Reason, authorize
from zpay.services import idempotency, transfers
from zpay.services.auth import Principal
from zpay.services.books import book, ledger_of
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page, page_body
from zpay.services.requests import Request
from zpay.services.session_keys import key_state, load_key, load_secret, token_of
from zpay.services.sessions import policy_state
from zpay.services.views import payment_view, session_key_view
from zpay.store.ids import new_id
from zpay.store.models import (
    Agent,
    Payment,
    PaymentAttempt,
    PolicySession,
    SessionKey,
)

log = logging.getLogger(__name__)


class PaymentRequest(Request):
    session_key_id: str
    amount: str
    recipient: str
    description: str | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """The answer to `POST /v1/payments`: a payment (201 final, 202 in flight) or a
    refusal; `replayed` when an earlier request with the same Idempotency-Key made it."""

    status_code: int
    body: dict[str, Any]
    error: ZpayError | None = None
    replayed: bool = False


def _view(p: Payment, key: SessionKey) -> dict[str, Any]:
    return payment_view(p, key.decimals, key.token_symbol)


def _answer(body: dict[str, Any], *, replayed: bool = False) -> PaymentOutcome:
    if body["status"] == PaymentStatus.FAILED and body["failure_code"] == "chain_unavailable":
        # Nothing was sent: the chain could not be reached to sign against.
        error = ZpayError("the chain is unavailable; nothing was sent", code="chain_unavailable",
                          payment_id=body["id"])
        return PaymentOutcome(503, body, error, replayed)
    final = body["status"] in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    return PaymentOutcome(201 if final else 202, body, None, replayed)


async def create_payment(ctx: AppContext, principal: Principal, req: PaymentRequest,
                         idempotency_key: str | None = None) -> PaymentOutcome:
    fingerprint = idempotency.request_fingerprint(msgspec.structs.asdict(req))
    for _ in range(3):
        try:
            authorized = await _authorize(ctx, principal, req, idempotency_key, fingerprint)
            break
        except IntegrityError:
            continue  # a concurrent request bound this Idempotency-Key first: read it
    else:
        raise Conflict("a request with this Idempotency-Key is in flight",
                       code="idempotency_request_in_flight")
    if isinstance(authorized, idempotency.Remembered):
        return await _replay(ctx, principal, authorized)
    payment, key, secret = authorized
    try:
        body = await _submit_and_settle(ctx, payment, key, secret)
    except Exception:
        # The hold is written and bound to the key: the payment is answered as it stands
        # and reconciliation settles it from the chain. (Cancellation propagates; the
        # binding makes a retry answer this payment, never pay twice.)
        log.exception("payment %s: unexpected error after authorization", payment.id)
        body = await _current_view(ctx, payment.id)
    return _answer(body)


async def _replay(ctx: AppContext, principal: Principal,
                  remembered: idempotency.Remembered) -> PaymentOutcome:
    if remembered.payment_id is None:
        refusal = remembered.refusal or {}
        error = PaymentRefused(str(refusal.get("message", "payment refused")),
                               code=str(refusal.get("code", "payment_refused")))
        return PaymentOutcome(402, {}, error, replayed=True)
    async with ctx.db.sessions() as s:
        payment = await s.get(Payment, remembered.payment_id)
        assert payment is not None
        key = await load_key(s, principal, payment.session_key_id)
    return _answer(_view(payment, key), replayed=True)


async def _current_view(ctx: AppContext, payment_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        row = await s.get(Payment, payment_id)
        assert row is not None
        key = await s.get(SessionKey, row.session_key_id)
        assert key is not None
        return _view(row, key)


async def _authorize(
    ctx: AppContext, principal: Principal, req: PaymentRequest, idempotency_key: str | None,
    fingerprint: str,
) -> idempotency.Remembered | tuple[Payment, SessionKey, bytes]:
    """Step 1 in ONE transaction: both layers checked under lock, then the hold AND the
    Idempotency-Key binding are written. A refusal is committed to the audit log (and the
    key) before it is raised."""
    now = ctx.now()
    merchant_id = principal.merchant_id
    async with ctx.db.transaction() as s:
        if idempotency_key is not None:
            remembered = await idempotency.recall(s, merchant_id, idempotency_key,
                                                  fingerprint, now)
            if remembered is not None:
                return remembered
        key = await load_key(s, principal, req.session_key_id, lock=True)
        adapter = ctx.chains.get(key.chain)
        token = token_of(key, adapter)
        value = parse_amount(req.amount, decimals=token.decimals,
                             max_base_units=token.max_base_units)
        recipient = adapter.validate_address(req.recipient)
        policy_row = await _lock_policy(s, key.policy_session_id)
        policy = await policy_state(s, policy_row, now) if policy_row is not None else None
        decision = authorize(value, key=key_state(key), policy=policy, recipient=recipient,
                             chain=key.chain, now=now)
        refusal = None if decision.allowed else decision.reason
        # An agent's own token was just checked active; a merchant paying for an agent's
        # key needs the agent looked up.
        if refusal is None and key.agent_id is not None and principal.agent_id != key.agent_id:
            agent = await s.get(Agent, key.agent_id)
            if agent is None or agent.status != "active":
                refusal = Reason.AGENT_FROZEN
        payment_id = new_id("pay") if refusal is None else None
        s.add(PaymentAttempt(id=new_id("att"), merchant_id=key.merchant_id,
                             session_key_id=key.id, agent_id=principal.agent_id, amount=value,
                             recipient=recipient, allowed=refusal is None,
                             reason=refusal or Reason.APPROVED, payment_id=payment_id,
                             created_at=now))
        if refusal is not None:
            if idempotency_key is not None:
                idempotency.remember(s, ctx, merchant_id, idempotency_key, fingerprint,
                                     refusal={"code": refusal,
                                              "message": _refusal_message(refusal)})
        else:
            assert payment_id is not None
            payment = Payment(
                id=payment_id, merchant_id=key.merchant_id, session_key_id=key.id,
                agent_id=principal.agent_id, policy_session_id=key.policy_session_id,
                chain=key.chain, amount=value, recipient=recipient, description=req.description,
                status=PaymentStatus.AUTHORIZED.value, tx_reference=None, tx_id=None,
                failure_code=None, idempotency_key=idempotency_key, created_at=now,
                updated_at=now)
            s.add(payment)
            book(key, ledger_of(key).hold(value))
            key.last_activity_at = key.updated_at = now
            if policy_row is not None:
                policy_row.total_committed += value
            if idempotency_key is not None:
                idempotency.remember(s, ctx, merchant_id, idempotency_key, fingerprint,
                                     payment_id=payment_id)
            secret = await load_secret(ctx, s, key)
    if refusal is not None:
        raise PaymentRefused(_refusal_message(refusal), code=refusal)
    return payment, key, secret


def _refusal_message(reason: str) -> str:
    return {
        Reason.INSUFFICIENT_BALANCE: "the session key's remaining balance is too low",
        Reason.PER_TRANSACTION: "the amount exceeds the session's per-transaction limit",
        Reason.DAILY: "the amount exceeds what the session allows today",
        Reason.WEEKLY: "the amount exceeds what the session allows this week",
        Reason.MONTHLY: "the amount exceeds what the session allows this month",
        Reason.TOTAL: "the amount exceeds the session's total limit",
    }.get(reason, f"payment refused: {reason.replace('_', ' ')}")


async def _submit_and_settle(ctx: AppContext, payment: Payment, key: SessionKey,
                             secret: bytes) -> dict[str, Any]:
    adapter = ctx.chains.get(key.chain)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.settings.confirm_timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            prepared = await adapter.prepare_transfer(
                secret=secret, source=key.address, destination=payment.recipient,
                token=token_of(key, adapter), amount_base_units=payment.amount,
                reference_seed=f"{key.id}:{payment.id}")
    except (ChainError, TimeoutError) as exc:
        # Nothing was signed into the books nor sent: the hold goes back at once.
        code = exc.code if isinstance(exc, ChainError) else "chain_unavailable"
        if code in ("chain_unavailable", "confirmation_timeout"):
            code = "chain_unavailable"
        log.warning("payment %s: could not prepare its transfer (%s)", payment.id, code)
        return await release_unsent(ctx, payment.id, code)
    finally:
        del secret
    # Record the transfer BEFORE sending, so any process can finish it from the chain.
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await _lock_key_row(s, key.id)
        row = await _lock_payment(s, payment.id)
        if row.status != PaymentStatus.AUTHORIZED:
            return _view(row, key)  # released by reconciliation meanwhile; nothing was sent
        if key.status == KeyStatus.REVOKED or now >= key.expires_at:
            # Revocation is immediate: nothing was sent yet, so the payment fails.
            code = (Reason.SESSION_KEY_REVOKED if key.status == KeyStatus.REVOKED
                    else Reason.SESSION_KEY_EXPIRED)
            _release(s, key, row, code, await _lock_policy(s, row.policy_session_id), now)
            return _view(row, key)
        transfer = transfers.record(s, key=key, kind="payment", subject_id=row.id,
                                    prepared=prepared, amount=row.amount, now=now)
        row.status, row.tx_reference = PaymentStatus.SUBMITTED.value, prepared.reference
        row.updated_at = now
    status = await transfers.send_and_wait(adapter, prepared, max(deadline - loop.time(), 0))
    return await settle(ctx, transfer.id, status)


async def _lock_key_row(s: AsyncSession, key_id: str) -> SessionKey:
    return (await s.execute(select(SessionKey).where(SessionKey.id == key_id)
                            .with_for_update().execution_options(populate_existing=True)
                            )).scalar_one()


async def _lock_payment(s: AsyncSession, payment_id: str) -> Payment:
    # populate_existing: an earlier unlocked read of the row must not win over the lock.
    return (await s.execute(select(Payment).where(Payment.id == payment_id)
                            .with_for_update().execution_options(populate_existing=True)
                            )).scalar_one()


async def _lock_policy(s: AsyncSession, policy_session_id: str | None) -> PolicySession | None:
    if policy_session_id is None:
        return None
    return (await s.execute(select(PolicySession).where(
        PolicySession.id == policy_session_id).with_for_update())).scalar_one()


def _release(s: AsyncSession, key: SessionKey, payment: Payment, code: str,
             policy: PolicySession | None, now: datetime) -> None:
    book(key, ledger_of(key).release(payment.amount))
    if policy is not None:
        policy.total_committed -= payment.amount
    payment.status, payment.failure_code, payment.updated_at = (
        PaymentStatus.FAILED.value, code, now)
    emit(s, merchant_id=payment.merchant_id, type="payment.failed", object_type="payment",
         object_id=payment.id, data=_view(payment, key), now=now)


def _capture(s: AsyncSession, key: SessionKey, payment: Payment, tx_id: str | None,
             policy: PolicySession | None, now: datetime) -> None:
    ledger = ledger_of(key)
    if payment.status == PaymentStatus.FAILED:
        # Released, yet its transfer landed after all: the chain is the truth.
        log.error("payment %s was released but its transfer landed; capturing it late",
                  payment.id)
        ledger = ledger.late_capture(payment.amount)
        if policy is not None:
            policy.total_committed += payment.amount
        payment.failure_code = None
    else:
        ledger = ledger.capture(payment.amount)
    book(key, ledger)
    key.transaction_count += 1
    key.updated_at = now
    payment.status, payment.tx_id, payment.updated_at = PaymentStatus.SUCCEEDED.value, tx_id, now
    emit(s, merchant_id=payment.merchant_id, type="payment.succeeded", object_type="payment",
         object_id=payment.id, data=_view(payment, key), now=now)
    if key.status == KeyStatus.ACTIVE and ledger.remaining == 0 and ledger.held == 0:
        key.status = KeyStatus.EXHAUSTED.value
        emit(s, merchant_id=key.merchant_id, type="session_key.exhausted",
             object_type="session_key", object_id=key.id, data=session_key_view(key), now=now)


def _failure_code(payment_id: str, status: TransferStatus) -> str:
    """A stable code for `failure_code`: zpay's own codes pass through; an adapter's prose
    (what the chain said) goes to the log and the payment says `transfer_failed`."""
    if status.error and _CODE.fullmatch(status.error):
        return status.error
    log.warning("payment %s failed on chain: %s", payment_id, status.error)
    return "transfer_failed"


_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


async def settle(ctx: AppContext, transfer_id: str, status: TransferStatus) -> dict[str, Any]:
    """Step 3, from the chain's answer for the payment's recorded transfer: confirmed →
    capture (late, if it had been released); failed (provably never lands) → release;
    anything else → left for reconciliation. Idempotent: a transfer already concluded
    leaves the payment as it is."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await transfers.lock_key_of(s, transfer_id)
        transfer = await transfers.lock(s, transfer_id)
        payment = await _lock_payment(s, transfer.subject_id)
        code = _failure_code(payment.id, status) if status.state is TransferState.FAILED else None
        if not transfers.conclude(transfer, status, code, now):
            return _view(payment, key)
        policy = await _lock_policy(s, payment.policy_session_id)
        if status.state is TransferState.CONFIRMED and payment.status != PaymentStatus.SUCCEEDED:
            _capture(s, key, payment, transfer.tx_id, policy, now)
        elif status.state is TransferState.FAILED and payment.status == PaymentStatus.SUBMITTED:
            assert code is not None
            _release(s, key, payment, code, policy, now)
        return _view(payment, key)


async def release_unsent(ctx: AppContext, payment_id: str, code: str) -> dict[str, Any]:
    """Release a payment that is still `authorized`: no transfer of it was recorded, so
    none was sent, and `_submit_and_settle` sends nothing for a payment no longer
    `authorized` (checked under the same locks)."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = (await s.execute(select(SessionKey).where(
            SessionKey.id == select(Payment.session_key_id).where(Payment.id == payment_id)
            .scalar_subquery()).with_for_update()
            .execution_options(populate_existing=True))).scalar_one()
        payment = await _lock_payment(s, payment_id)
        if payment.status == PaymentStatus.AUTHORIZED:
            _release(s, key, payment, code, await _lock_policy(s, payment.policy_session_id),
                     now)
        return _view(payment, key)


async def get_payment(ctx: AppContext, principal: Principal, payment_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        payment = await s.get(Payment, payment_id)
        if payment is None or payment.merchant_id != principal.merchant_id:
            raise NotFound(f"no payment {payment_id!r}", code="payment_not_found")
        key = await load_key(s, principal, payment.session_key_id)  # agent scoping
    return _view(payment, key)


async def list_payments(ctx: AppContext, principal: Principal, page: Page,
                        session_key_id: str | None = None) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        stmt = (select(Payment, SessionKey).join(SessionKey,
                                                 SessionKey.id == Payment.session_key_id)
                .where(Payment.merchant_id == principal.merchant_id))
        if principal.agent_id is not None:
            stmt = stmt.where(SessionKey.agent_id == principal.agent_id)
        if session_key_id is not None:
            stmt = stmt.where(Payment.session_key_id == session_key_id)
        rows = (await s.execute(page.apply(stmt, Payment.id))).all()
    return page_body(rows, page, lambda r: _view(r[0], r[1]))
