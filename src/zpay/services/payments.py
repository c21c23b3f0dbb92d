"""Payments from a session key: authorize (hold) → sign and submit → capture or release."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import (
    ChainError,
    ChainUnavailable,
    ConfirmationTimeout,
    TransferFailed,
    TransferState,
    TransferStatus,
)
from zpay.domain.errors import NotFound, PaymentRefused
from zpay.domain.lifecycle import KeyStatus, PaymentStatus, balance_status
from zpay.domain.money import parse_amount
from zpay.domain.policy import Reason, authorize
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page, page_body
from zpay.services.requests import Request
from zpay.services.session_keys import key_state, load_key, load_secret, token_of
from zpay.services.sessions import policy_state
from zpay.services.views import payment_view, session_key_view
from zpay.store.ids import new_id
from zpay.store.models import Agent, Payment, PaymentAttempt, PolicySession, SessionKey

log = logging.getLogger(__name__)


class PaymentRequest(Request):
    session_key_id: str
    amount: str
    recipient: str
    description: str | None = None


def _view(p: Payment, key: SessionKey) -> dict[str, Any]:
    return payment_view(p, key.decimals, key.token_symbol)


async def _authorize(ctx: AppContext, principal: Principal, req: PaymentRequest,
                     idempotency_key: str | None) -> tuple[Payment, SessionKey, bytes]:
    """Step 1 in ONE transaction: both layers checked under lock, then the hold is written.
    A refusal is committed to the audit log before it is raised."""
    now = ctx.now()
    refusal: str | None = None
    async with ctx.db.transaction() as s:
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
        if refusal is None:
            assert payment_id is not None
            payment = Payment(
                id=payment_id, merchant_id=key.merchant_id, session_key_id=key.id,
                agent_id=principal.agent_id, policy_session_id=key.policy_session_id,
                chain=key.chain, amount=value, recipient=recipient, description=req.description,
                status=PaymentStatus.AUTHORIZED.value, tx_reference=None, tx_id=None,
                failure_code=None, idempotency_key=idempotency_key, created_at=now,
                updated_at=now)
            s.add(payment)
            key.held_amount += value
            key.last_activity_at = key.updated_at = now
            if policy_row is not None:
                policy_row.total_committed += value
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


async def create_payment(ctx: AppContext, principal: Principal, req: PaymentRequest,
                         idempotency_key: str | None = None) -> dict[str, Any]:
    payment, key, secret = await _authorize(ctx, principal, req, idempotency_key)
    try:
        return await _submit_and_settle(ctx, payment, key, secret)
    except Exception:
        # The hold is written: an error now must not invite a retry that pays twice. The
        # payment is answered as it stands; reconciliation settles it from the chain.
        log.exception("payment %s: unexpected error after authorization", payment.id)
        async with ctx.db.sessions() as s:
            row = await s.get(Payment, payment.id)
            assert row is not None
            return _view(row, key)


async def _submit_and_settle(ctx: AppContext, payment: Payment, key: SessionKey,
                             secret: bytes) -> dict[str, Any]:
    adapter = ctx.chains.get(key.chain)
    try:
        prepared = await adapter.prepare_transfer(
            secret=secret, source=key.address, destination=payment.recipient,
            token=token_of(key, adapter), amount_base_units=payment.amount,
            reference_seed=f"{key.id}:{payment.id}")
    except ChainError as exc:
        return await settle(ctx, payment.id, TransferStatus(TransferState.FAILED, error=exc.code))
    finally:
        del secret
    # Record the reference BEFORE sending, so a crash here is recoverable from the chain.
    async with ctx.db.transaction() as s:
        key = await _lock_key_row(s, key.id)
        row = await _lock_payment(s, payment.id)
        if row.status != PaymentStatus.AUTHORIZED:
            return _view(row, key)  # released by reconciliation meanwhile; nothing was sent
        if key.status == KeyStatus.REVOKED or ctx.now() >= key.expires_at:
            # Revocation is immediate: nothing was sent yet, so the payment fails.
            code = (Reason.SESSION_KEY_REVOKED if key.status == KeyStatus.REVOKED
                    else Reason.SESSION_KEY_EXPIRED)
            _release(s, key, row, code, await _lock_policy(s, row.policy_session_id), ctx.now())
            return _view(row, key)
        row.status, row.tx_reference = PaymentStatus.SUBMITTED.value, prepared.reference
        row.tx_payload = prepared.payload
        row.updated_at = ctx.now()
    try:
        await adapter.submit_transfer(prepared)
        status = await adapter.wait_for_transfer(prepared.reference,
                                                 timeout_s=ctx.settings.confirm_timeout_s)
    except (ChainUnavailable, ConfirmationTimeout):
        log.warning("payment %s submitted, outcome unknown; reconciliation will settle it",
                    payment.id)
        status = TransferStatus(TransferState.PENDING)
    except ChainError as exc:
        # Only the chain's own answer may release the hold: a transfer the chain still
        # might settle stays `submitted` for reconciliation.
        try:
            status = await adapter.transfer_status(prepared.reference)
        except ChainError:
            status = TransferStatus(TransferState.PENDING)
        if status.state is TransferState.UNKNOWN and isinstance(exc, TransferFailed):
            status = TransferStatus(TransferState.FAILED, error=exc.code)
    return await settle(ctx, payment.id, status)


async def _lock_key_row(s: AsyncSession, key_id: str) -> SessionKey:
    return (await s.execute(select(SessionKey).where(SessionKey.id == key_id)
                            .with_for_update())).scalar_one()


async def _lock_payment(s: AsyncSession, payment_id: str) -> Payment:
    # populate_existing: settle() has read the row unlocked; the locked read must win.
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
    key.held_amount -= payment.amount
    if policy is not None:
        policy.total_committed -= payment.amount
    payment.status, payment.failure_code, payment.updated_at = (
        PaymentStatus.FAILED.value, code, now)
    emit(s, merchant_id=payment.merchant_id, type="payment.failed", object_type="payment",
         object_id=payment.id, data=_view(payment, key), now=now)


def _capture(s: AsyncSession, key: SessionKey, payment: Payment, tx_id: str | None,
             now: datetime) -> None:
    key.held_amount -= payment.amount
    key.spent_amount += payment.amount
    key.transaction_count += 1
    key.updated_at = now
    payment.status, payment.tx_id, payment.updated_at = PaymentStatus.SUCCEEDED.value, tx_id, now
    emit(s, merchant_id=payment.merchant_id, type="payment.succeeded", object_type="payment",
         object_id=payment.id, data=_view(payment, key), now=now)
    if key.status == KeyStatus.ACTIVE and balance_status(
        key.funded_amount, key.spent_amount, key.held_amount
    ) is KeyStatus.EXHAUSTED:
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


async def settle(ctx: AppContext, payment_id: str, status: TransferStatus,
                 *, only_if: PaymentStatus | None = None) -> dict[str, Any]:
    """Step 3: confirmed → capture; failed → release; pending → leave for reconciliation.
    Idempotent: a payment already settled is returned as it is. With `only_if`, a payment
    no longer in that status (checked under lock) is returned untouched."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        # The key's lock first (as everywhere), found through the payment in one query.
        key = (await s.execute(select(SessionKey).where(
            SessionKey.id == select(Payment.session_key_id).where(Payment.id == payment_id)
            .scalar_subquery()).with_for_update())).scalar_one()
        payment = await _lock_payment(s, payment_id)
        if payment.status in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED) or (
            only_if is not None and payment.status != only_if
        ):
            return _view(payment, key)
        if status.state is TransferState.CONFIRMED:
            _capture(s, key, payment, status.tx_id or payment.tx_reference, now)
        elif status.state is TransferState.FAILED:
            policy = await _lock_policy(s, payment.policy_session_id)
            _release(s, key, payment, _failure_code(payment.id, status), policy, now)
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
