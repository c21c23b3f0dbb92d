"""Give what is left in expired or revoked session wallets back to the user.

A key qualifies once it is closed (expired or revoked) with `refund_status="pending"`,
nothing held and no approval or refund transfer still pending: a payment in flight could
otherwise land after the sweep, and funds arriving late are swept as well.

The refund is a transfer like any other (services.transfers): the books' remainder —
funded - spent - refunded, capped by what the chain shows in the wallet — is signed,
recorded, then sent; it is booked as refunded only when the chain shows it landed (here or
in reconciliation, after a crash), and a refund that provably never landed is tried again.
`refund_status` moves pending → sweeping → done | skipped (nothing to return), or →
retrying after a chain error (claimed again after `LEASE`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select

from zpay.chains.protocol import ChainError, TransferState, TransferStatus
from zpay.domain.errors import ZpayError
from zpay.domain.lifecycle import KeyStatus
from zpay.services import transfers
from zpay.services.books import book, ledger_of
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.session_keys import load_secret, token_of
from zpay.services.views import amount, session_key_view
from zpay.store.models import ChainTransfer, SessionKey

log = logging.getLogger(__name__)

BATCH = 20  # sweeps are chain round-trips, one after another
LEASE = timedelta(minutes=1)
_CLOSED = (KeyStatus.EXPIRED.value, KeyStatus.REVOKED.value)


@dataclass(frozen=True)
class _Claimed:
    key: SessionKey  # detached snapshot: read-only outside its transaction
    secret: bytes
    attempt: int


async def _claim(ctx: AppContext, now: datetime, batch: int) -> list[_Claimed]:
    in_flight = exists().where(ChainTransfer.session_key_id == SessionKey.id,
                               ChainTransfer.kind.in_(("approval", "refund")),
                               ChainTransfer.status == transfers.PENDING)
    async with ctx.db.transaction() as s:
        keys = (await s.execute(
            select(SessionKey)
            .where(SessionKey.status.in_(_CLOSED), SessionKey.held_amount == 0,
                   or_(SessionKey.refund_status == "pending",
                       and_(SessionKey.refund_status.in_(("sweeping", "retrying")),
                            SessionKey.updated_at <= now - LEASE)),
                   ~in_flight)
            .order_by(SessionKey.updated_at, SessionKey.id).limit(batch)
            .with_for_update(skip_locked=True)
        )).scalars().all()
        claimed = []
        for key in keys:
            key.refund_status, key.updated_at = "sweeping", now
            attempts = (await s.execute(select(func.count()).select_from(ChainTransfer).where(
                ChainTransfer.subject_id == key.id, ChainTransfer.kind == "refund"))
            ).scalar_one()
            claimed.append(_Claimed(key, await load_secret(ctx, s, key), attempts))
    return claimed


async def _refund(ctx: AppContext, claimed: _Claimed) -> None:
    key = claimed.key
    owed = ledger_of(key).in_wallet
    try:
        adapter = ctx.chains.get(key.chain)
        token = token_of(key, adapter)
        on_chain = await adapter.balance(key.address, token) if owed > 0 else 0
        value = min(owed, on_chain)
        if value == 0:
            if owed > 0:
                log.error("session wallet of %s holds nothing on chain, the books owe the user "
                          "%d base units: not booked (the audit reports it)", key.id, owed)
            await _finish(ctx, key.id, "done" if key.refunded_amount > 0 else "skipped")
            return
        prepared = await adapter.prepare_transfer(
            secret=claimed.secret, source=key.address, destination=key.user_wallet,
            token=token, amount_base_units=value,
            reference_seed=f"refund:{key.id}:{claimed.attempt}", close_source=value == on_chain)
    except (ChainError, ZpayError) as exc:
        log.warning("refund of session key %s failed (%s); retrying in %s", key.id,
                    getattr(exc, "code", type(exc).__name__), LEASE)
        await _finish(ctx, key.id, "retrying")
        return
    now = ctx.now()
    async with ctx.db.transaction() as s:
        row = await s.get(SessionKey, key.id, with_for_update=True)
        assert row is not None
        if row.refund_status != "sweeping":
            return  # another worker took over after our lease lapsed
        transfer = transfers.record(s, key=row, kind="refund", subject_id=row.id,
                                    prepared=prepared, amount=value, now=now)
    status = await transfers.send_and_wait(adapter, prepared, ctx.settings.confirm_timeout_s)
    await settle(ctx, transfer.id, status)


async def _finish(ctx: AppContext, key_id: str, outcome: str) -> None:
    async with ctx.db.transaction() as s:
        key = await s.get(SessionKey, key_id, with_for_update=True)
        assert key is not None
        if key.refund_status == "sweeping":
            key.refund_status, key.updated_at = outcome, ctx.now()


async def settle(ctx: AppContext, transfer_id: str, status: TransferStatus) -> dict[str, Any]:
    """Book a refund transfer from the chain's answer: landed → refunded (exactly its
    amount, with its transaction); provably never landing → tried again."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await transfers.lock_key_of(s, transfer_id)
        transfer = await transfers.lock(s, transfer_id)
        code = (status.error or "transfer_failed") if status.state is TransferState.FAILED else None
        if not transfers.conclude(transfer, status, code, now):
            return session_key_view(key)
        if status.state is TransferState.CONFIRMED:
            book(key, ledger_of(key).refund(transfer.amount))
            key.refund_tx_id, key.refund_status, key.updated_at = transfer.tx_id, "done", now
            emit(s, merchant_id=key.merchant_id, type="session_key.refunded",
                 object_type="session_key", object_id=key.id, now=now,
                 data={**session_key_view(key), "refund_tx_id": transfer.tx_id,
                       "refund_amount": amount(transfer.amount, key.decimals)})
        else:
            log.warning("refund %s of %s never landed (%s); trying again", transfer.id, key.id,
                        code)
            key.refund_status, key.updated_at = "pending", now
        return session_key_view(key)


async def run_refunds(ctx: AppContext, *, batch: int = BATCH) -> int:
    """Refund up to `batch` closed session wallets to their users. Returns how many."""
    claimed = await _claim(ctx, ctx.now(), batch)
    for item in claimed:
        await _refund(ctx, item)
    return len(claimed)
