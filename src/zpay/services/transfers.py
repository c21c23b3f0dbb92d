"""Durable chain transfers: what zpay signed, recorded BEFORE it is sent.

Every approval, payment and refund zpay puts on chain is a `ChainTransfer` row with its
reference, the signed bytes and its validity in chain terms, written in a committed
transaction before the first byte goes to a node. Status, re-sending and finality read
these rows and the chain, so any process (an API replica, a worker, the same process after
a crash) can finish any transfer. The ledger changes that follow an outcome are the
owning service's (payments, approvals, refunds); this module only keeps the rows.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import (
    ChainAdapter,
    ChainError,
    ChainUnavailable,
    PreparedTransfer,
    TransferState,
    TransferStatus,
)
from zpay.services.rows import insert_row, update_row
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import ChainTransfer, SessionKey

log = logging.getLogger(__name__)

PENDING, CONFIRMED, FAILED = "pending", "confirmed", "failed"


def record(s: AsyncSession, *, key: SessionKey, kind: str, subject_id: str,
           prepared: PreparedTransfer, amount: int, now: datetime) -> ChainTransfer:
    transfer = ChainTransfer(
        id=new_id("xfer"), merchant_id=key.merchant_id, session_key_id=key.id, kind=kind,
        subject_id=subject_id, chain=key.chain, reference=prepared.reference,
        payload=prepared.payload, amount=amount, valid_until=prepared.valid_until,
        status=PENDING, tx_id=None, failure_code=None, created_at=now, updated_at=now)
    s.add(transfer)
    return transfer


async def insert(s: Executor, *, key: SessionKey, kind: str, subject_id: str,
                 prepared: PreparedTransfer, amount: int, now: datetime) -> str:
    """`record` in one INSERT statement (the payment hot path); returns the transfer's id."""
    transfer_id = new_id("xfer")
    await insert_row(s, ChainTransfer, dict(
        id=transfer_id, merchant_id=key.merchant_id, session_key_id=key.id, kind=kind,
        subject_id=subject_id, chain=key.chain, reference=prepared.reference,
        payload=prepared.payload, amount=amount, valid_until=prepared.valid_until,
        status=PENDING, tx_id=None, failure_code=None, created_at=now, updated_at=now))
    return transfer_id


async def conclude_locked(s: Executor, transfer_id: str, reference: str,
                          status: TransferStatus, code: str | None,
                          now: datetime) -> str | None:
    """`conclude` as one UPDATE by id, for a transfer read `pending` under its key's row
    lock: every conclusion takes that lock first (`lock_key_of`, the payment hot path),
    so it is still pending. The id the chain knows it by (a confirmation without one keeps
    the reference: what zpay sent is what landed); None, and nothing written, when the
    answer is not final."""
    if status.state is TransferState.CONFIRMED:
        tx_id = status.tx_id or reference
        await update_row(s, ChainTransfer, transfer_id, dict(
            status=CONFIRMED, tx_id=tx_id, updated_at=now))
        return tx_id
    if status.state is TransferState.FAILED:
        await update_row(s, ChainTransfer, transfer_id, dict(
            status=FAILED, failure_code=code, updated_at=now))
    return None


async def lock_key_of(s: AsyncSession, transfer_id: str) -> SessionKey:
    """The key's row lock first (as everywhere), found through the transfer in one query."""
    return (await s.execute(select(SessionKey).where(
        SessionKey.id == select(ChainTransfer.session_key_id)
        .where(ChainTransfer.id == transfer_id).scalar_subquery()).with_for_update()
        .execution_options(populate_existing=True))).scalar_one()


async def lock(s: AsyncSession, transfer_id: str) -> ChainTransfer:
    return (await s.execute(select(ChainTransfer).where(ChainTransfer.id == transfer_id)
                            .with_for_update().execution_options(populate_existing=True)
                            )).scalar_one()


def conclude(transfer: ChainTransfer, status: TransferStatus, code: str | None,
             now: datetime) -> bool:
    """Mark a pending transfer with a final chain answer. False if it was already final
    (another process concluded it) or the answer is not final."""
    if transfer.status != PENDING:
        return False
    if status.state is TransferState.CONFIRMED:
        transfer.status, transfer.tx_id = CONFIRMED, status.tx_id or transfer.reference
    elif status.state is TransferState.FAILED:
        transfer.status, transfer.failure_code = FAILED, code
    else:
        return False
    transfer.updated_at = now
    return True


async def send_and_wait(adapter: ChainAdapter, prepared: PreparedTransfer,
                        timeout_s: float) -> TransferStatus:
    """Send a recorded transfer and wait for the chain's answer, within `timeout_s` in all
    (every chain call included). An unreachable node or a timeout leaves the transfer
    PENDING for reconciliation; FAILED comes from the chain (validity lapsed, executed with
    an error) or from a refusal the chain confirms it never saw."""
    try:
        async with asyncio.timeout(timeout_s):
            try:
                await adapter.submit_transfer(prepared)
            except ChainUnavailable as exc:
                log.warning("transfer %s: node unavailable while sending (%s)",
                            prepared.reference, exc.code)
                return TransferStatus(TransferState.PENDING)
            except ChainError as exc:
                # Adapters raise this only when the node refused the transfer before the
                # chain took it. If the chain has indeed never seen it, it is final: zpay
                # holds the only copy of these signed bytes and never re-sends a failed row.
                log.info("transfer %s: send refused (%s); asking the chain", prepared.reference,
                         exc.code)
                status = await adapter.transfer_status(prepared.reference,
                                                       valid_until=prepared.valid_until)
                if status.state is TransferState.UNKNOWN:
                    return TransferStatus(TransferState.FAILED, error=exc.code)
                return status
            return await adapter.wait_for_transfer(prepared.reference, timeout_s=timeout_s,
                                                   valid_until=prepared.valid_until)
    except TimeoutError:
        log.warning("transfer %s: no final answer within %ss; reconciliation takes over",
                    prepared.reference, timeout_s)
    except ChainError as exc:
        log.warning("transfer %s: outcome unknown (%s); reconciliation takes over",
                    prepared.reference, exc.code)
    return TransferStatus(TransferState.PENDING)
