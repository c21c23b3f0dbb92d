"""Settle payments a crash or a lost connection left half-done, from the chain's answer.

- `submitted` (the signed transfer is recorded, it may be on chain): ask the
  chain. Confirmed → capture; failed → release; pending → look again later.
  Never seen: the process died between recording and sending, so send exactly
  the recorded transfer again (the same signed bytes can only land once) —
  unless the key was revoked or expired meanwhile, as those never pay. Still
  never seen `UNKNOWN_GRACE` after creation → release: its validity window
  (Solana blockhash, EIP-3009 `validBefore`) has passed, so it can never land.
- `authorized` for `AUTHORIZED_GRACE` (a hold but no reference: the process
  died before recording the transfer, so nothing was sent) → release. The
  release only applies if the payment is still `authorized` under lock, and
  `create_payment` will not submit a payment that is no longer `authorized`.

Never guessing: a chain that cannot be asked leaves the payment as it is.
Claiming a payment moves its `updated_at` to now, so the next sweep (on any
worker) looks at it again only after `RECHECK_AFTER`, and a large backlog is
visited round-robin instead of the oldest rows starving the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select

from zpay.chains.protocol import (
    ChainError,
    ChainUnavailable,
    PreparedTransfer,
    TransferState,
    TransferStatus,
)
from zpay.domain.errors import ZpayError
from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.services.context import AppContext
from zpay.services.payments import settle
from zpay.store.models import Payment, SessionKey

log = logging.getLogger(__name__)

BATCH = 50
MAX_BATCHES = 10  # per tick
RECHECK_AFTER = timedelta(seconds=5)  # younger: create_payment is still waiting for the chain
UNKNOWN_GRACE = timedelta(minutes=10)
AUTHORIZED_GRACE = timedelta(minutes=2)


@dataclass(frozen=True)
class _Claimed:
    id: str
    status: str
    chain: str
    tx_reference: str | None
    tx_payload: bytes | None
    created_at: datetime
    may_send: bool  # the key can still pay: not revoked, not expired


async def _claim(ctx: AppContext, now: datetime, batch: int) -> list[_Claimed]:
    due = now - RECHECK_AFTER
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(Payment, SessionKey.status, SessionKey.expires_at)
            .join(SessionKey, SessionKey.id == Payment.session_key_id)
            .where(Payment.updated_at <= due, or_(
                Payment.status == PaymentStatus.SUBMITTED.value,
                and_(Payment.status == PaymentStatus.AUTHORIZED.value,
                     Payment.created_at <= now - AUTHORIZED_GRACE)))
            .order_by(Payment.updated_at, Payment.id).limit(batch)
            .with_for_update(skip_locked=True, of=Payment)
        )).all()
        claimed = []
        for row, key_status, key_expires_at in rows:
            row.updated_at = now
            claimed.append(_Claimed(
                row.id, row.status, row.chain, row.tx_reference, row.tx_payload,
                row.created_at, key_status != KeyStatus.REVOKED and now < key_expires_at))
        return claimed


async def _chain_status(ctx: AppContext, payment: _Claimed, now: datetime) -> TransferStatus:
    if payment.status == PaymentStatus.AUTHORIZED or payment.tx_reference is None:
        return TransferStatus(TransferState.FAILED, error="transfer_never_submitted")
    adapter = ctx.chains.get(payment.chain)
    status = await adapter.transfer_status(payment.tx_reference)
    if status.state is TransferState.UNKNOWN and payment.tx_payload and payment.may_send:
        try:
            await adapter.submit_transfer(
                PreparedTransfer(payment.tx_reference, payment.tx_payload))
        except ChainUnavailable:
            raise
        except ChainError as exc:
            log.info("re-sending payment %s was refused (%s)", payment.id, exc.code)
        # Whatever the send said, the chain's answer decides.
        status = await adapter.transfer_status(payment.tx_reference)
    if status.state is TransferState.UNKNOWN and now - payment.created_at >= UNKNOWN_GRACE:
        return TransferStatus(TransferState.FAILED, error="transfer_not_found")
    return status


async def reconcile_payments(ctx: AppContext, *, batch: int = BATCH,
                             max_batches: int = MAX_BATCHES) -> int:
    """Look at unsettled payments, `batch` at a time; returns how many were settled.
    A claimed payment is not claimed again this tick: its `updated_at` moved to now."""
    now = ctx.now()
    settled = 0
    for _ in range(max_batches):
        claimed = await _claim(ctx, now, batch)
        for payment in claimed:
            try:
                status = await _chain_status(ctx, payment, now)
            except (ChainError, ZpayError) as exc:
                log.warning("cannot reconcile payment %s now (%s); will retry", payment.id,
                            getattr(exc, "code", type(exc).__name__))
                continue
            if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
                body = await settle(ctx, payment.id, status,
                                    only_if=PaymentStatus(payment.status))
                settled += body["status"] in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
        if len(claimed) < batch:
            break
    return settled
