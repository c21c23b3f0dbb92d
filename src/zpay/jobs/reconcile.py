"""Finish what a crash, a timeout or a lost connection left half-done, from the chain.

- Every `pending` chain transfer (approval, payment, refund: services.transfers) is asked
  of the chain, from its recorded reference and validity alone — so any process can do
  it. Landed → the owning service books it (capture, funding, refund). Provably never
  landing (EVM: unused at a block stamped past validBefore; Solana: unknown past its last
  valid block height) → released / lapsed / retried. Unknown to the chain but still valid
  → the recorded signed bytes are sent again (they can land only once), unless the key
  was revoked or expired meanwhile: those never pay, and such a transfer lapses by itself.
- A payment `authorized` past `authorized_grace` without a recorded transfer (the process
  died before recording it, so nothing was sent) is released; the release applies only if
  it is still `authorized` under lock, and nothing is sent for a payment that is not. The
  grace is the request's own deadline (`confirm_timeout_s`, which bounds the signing
  step) plus a margin: a live request is past that point by then.

Never guessing: a chain that cannot be asked leaves everything as it is. Claiming a row
moves its `updated_at` to now, so the next sweep (on any worker) looks at it again only
after `RECHECK_AFTER`, and a backlog is visited round-robin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from zpay.chains.protocol import (
    ChainError,
    ChainUnavailable,
    PreparedTransfer,
    TransferState,
    TransferStatus,
)
from zpay.domain.errors import ZpayError
from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.jobs import refunds
from zpay.services import approvals, payments, transfers
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.models import ChainTransfer, Payment, SessionKey

log = logging.getLogger(__name__)

BATCH = 50
MAX_BATCHES = 10  # per tick
RECHECK_AFTER = timedelta(seconds=5)  # younger: the request is still waiting for the chain
AUTHORIZED_MARGIN = timedelta(seconds=5)


def authorized_grace(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.confirm_timeout_s) + AUTHORIZED_MARGIN

Settler = Callable[[AppContext, str, TransferStatus], Awaitable[Any]]
SETTLERS: dict[str, Settler] = {
    "payment": payments.settle,
    "approval": approvals.settle,
    "refund": refunds.settle,
    # x402: signed by zpay, SENT by the resource server's facilitator; settled like a payment.
    "x402": payments.settle,
}
# Kinds zpay never sends itself (so never re-sends): someone else submits them.
NEVER_SENT = frozenset({"x402"})


@dataclass(frozen=True)
class _Claimed:
    id: str
    kind: str
    chain: str
    reference: str
    payload: bytes
    valid_until: int | None
    may_send: bool  # payments and approvals only for a key that can still use them


async def _claim(ctx: AppContext, now: datetime, batch: int) -> list[_Claimed]:
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(ChainTransfer, SessionKey.status, SessionKey.expires_at)
            .join(SessionKey, SessionKey.id == ChainTransfer.session_key_id)
            .where(ChainTransfer.status == transfers.PENDING,
                   ChainTransfer.updated_at <= now - RECHECK_AFTER)
            .order_by(ChainTransfer.updated_at, ChainTransfer.id).limit(batch)
            .with_for_update(skip_locked=True, of=ChainTransfer)
        )).all()
        claimed = []
        for row, key_status, key_expires_at in rows:
            row.updated_at = now
            live = key_status != KeyStatus.REVOKED and now < key_expires_at
            claimed.append(_Claimed(row.id, row.kind, row.chain, row.reference, row.payload,
                                    row.valid_until,
                                    (live or row.kind == "refund")
                                    and row.kind not in NEVER_SENT))
        return claimed


async def _chain_status(ctx: AppContext, transfer: _Claimed) -> TransferStatus:
    adapter = ctx.chains.get(transfer.chain)
    status = await adapter.transfer_status(transfer.reference, valid_until=transfer.valid_until)
    if status.state is TransferState.UNKNOWN and transfer.may_send:
        try:
            await adapter.submit_transfer(PreparedTransfer(
                transfer.reference, transfer.payload, valid_until=transfer.valid_until))
        except ChainUnavailable:
            raise
        except ChainError as exc:
            log.info("re-sending transfer %s was refused (%s)", transfer.id, exc.code)
        # Whatever the send said, the chain's answer decides.
        status = await adapter.transfer_status(transfer.reference,
                                               valid_until=transfer.valid_until)
    return status


async def _release_stale_authorized(ctx: AppContext, now: datetime, batch: int,
                                    max_batches: int) -> int:
    released = 0
    grace = authorized_grace(ctx.settings)
    for _ in range(max_batches):
        async with ctx.db.sessions() as s:
            ids = (await s.execute(
                select(Payment.id).where(Payment.status == PaymentStatus.AUTHORIZED.value,
                                         Payment.created_at <= now - grace)
                .order_by(Payment.created_at).limit(batch))).scalars().all()
        for payment_id in ids:
            body = await payments.release_unsent(ctx, payment_id, "transfer_never_submitted")
            released += body["status"] == PaymentStatus.FAILED
        if len(ids) < batch:
            break
    return released


async def reconcile_payments(ctx: AppContext, *, batch: int = BATCH,
                             max_batches: int = MAX_BATCHES) -> int:
    """Look at unsettled chain transfers, `batch` at a time; returns how many concluded.
    A claimed transfer is not claimed again this tick: its `updated_at` moved to now."""
    now = ctx.now()
    for name, adapter in ctx.chains.adapters.items():
        try:
            await adapter.maintain()
        except ChainError as exc:
            log.warning("upkeep of %s failed (%s); next tick", name, exc.code)
    settled = await _release_stale_authorized(ctx, now, batch, max_batches)
    for _ in range(max_batches):
        claimed = await _claim(ctx, now, batch)
        for transfer in claimed:
            try:
                status = await _chain_status(ctx, transfer)
            except (ChainError, ZpayError) as exc:
                log.warning("cannot reconcile transfer %s now (%s); will retry", transfer.id,
                            getattr(exc, "code", type(exc).__name__))
                continue
            if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
                await SETTLERS[transfer.kind](ctx, transfer.id, status)
                settled += 1
        if len(claimed) < batch:
            break
    return settled
