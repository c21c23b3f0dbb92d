"""Give what is left in expired or revoked session wallets back to the user.

A key qualifies once it is closed (expired or revoked) with
`refund_status="pending"` and nothing held: a payment still in flight could
otherwise land after the sweep, or fail and leave books that no longer add up;
reconciliation settles holds first. A key whose funding approval is still
being submitted waits too, so funds arriving late are swept as well.

`refund_status` moves pending → sweeping → done | skipped, or → retrying after
a chain error. "sweeping" is a lease: a worker that died mid-sweep leaves it,
and it is claimed again after `LEASE`. Sweeping twice cannot move funds twice:
the second sweep finds an empty wallet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select

from zpay.chains.protocol import ChainError, ChainReceipt, FlowNotSupported
from zpay.domain.errors import ZpayError
from zpay.domain.lifecycle import KeyStatus
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.session_keys import load_secret, token_of
from zpay.services.views import amount, session_key_view
from zpay.store.models import Approval, SessionKey

log = logging.getLogger(__name__)

BATCH = 20  # sweeps are chain round-trips, one after another
LEASE = timedelta(minutes=5)  # far above a sweep's confirmation time
_CLOSED = (KeyStatus.EXPIRED.value, KeyStatus.REVOKED.value)


@dataclass(frozen=True)
class _Claimed:
    key: SessionKey  # detached snapshot: read-only outside its transaction
    secret: bytes


async def _claim(ctx: AppContext, now: datetime, batch: int) -> list[_Claimed]:
    stale = now - LEASE
    approval_in_flight = exists().where(Approval.session_key_id == SessionKey.id,
                                        Approval.status == "submitting")
    async with ctx.db.transaction() as s:
        keys = (await s.execute(
            select(SessionKey)
            .where(SessionKey.status.in_(_CLOSED), SessionKey.held_amount == 0,
                   or_(SessionKey.refund_status == "pending",
                       and_(SessionKey.refund_status.in_(("sweeping", "retrying")),
                            SessionKey.updated_at <= stale)),
                   ~approval_in_flight)
            .order_by(SessionKey.updated_at, SessionKey.id).limit(batch)
            .with_for_update(skip_locked=True)
        )).scalars().all()
        claimed = []
        for key in keys:
            key.refund_status, key.updated_at = "sweeping", now
            claimed.append(_Claimed(key, await load_secret(ctx, s, key)))
    return claimed


async def _sweep(ctx: AppContext, claimed: _Claimed) -> ChainReceipt | str | None:
    """The receipt (None: the wallet was empty), or the refund_status to record instead.

    The chain is the truth: when the adapter reports an error but the wallet's balance did
    drop, the sweep landed (a closed key with nothing held has no other way out)."""
    key = claimed.key
    try:
        adapter = ctx.chains.get(key.chain)
        token = token_of(key, adapter)
        before = await adapter.balance(key.address, token)
    except (ChainError, ZpayError) as exc:
        return _retry(key, exc)
    try:
        return await adapter.sweep(secret=claimed.secret, source=key.address,
                                   destination=key.user_wallet, token=token)
    except FlowNotSupported:
        return "skipped"
    except (ChainError, ZpayError) as exc:
        try:
            after = await adapter.balance(key.address, token)
        except ChainError:
            return _retry(key, exc)
        if after < before:
            log.warning("refund of session key %s reported %s, but the chain shows it landed",
                        key.id, getattr(exc, "code", type(exc).__name__))
            return ChainReceipt(tx_id="", amount_base_units=before - after)
        return _retry(key, exc)


def _retry(key: SessionKey, exc: Exception) -> str:
    log.warning("refund of session key %s failed (%s); retrying in %s", key.id,
                getattr(exc, "code", type(exc).__name__), LEASE)
    return "retrying"


async def _record(ctx: AppContext, key_id: str, outcome: ChainReceipt | str | None) -> None:
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = (await s.execute(select(SessionKey).where(SessionKey.id == key_id)
                               .with_for_update())).scalar_one()
        if isinstance(outcome, ChainReceipt):
            # Recorded even if our lease lapsed: only one sweep can move a balance.
            key.refunded_amount += outcome.amount_base_units
            key.refund_tx_id, key.refund_status, key.updated_at = outcome.tx_id, "done", now
            emit(s, merchant_id=key.merchant_id, type="session_key.refunded",
                 object_type="session_key", object_id=key.id, now=now,
                 data={**session_key_view(key), "refund_tx_id": outcome.tx_id,
                       "refund_amount": amount(outcome.amount_base_units, key.decimals)})
            return
        if key.refund_status != "sweeping":
            return  # another worker took over after our lease lapsed
        if outcome is None:
            expected = key.funded_amount - key.spent_amount - key.refunded_amount
            if expected > 0:
                # The chain shows the wallet empty, and a closed key with nothing held has
                # no way out but a sweep to the user: an earlier, interrupted sweep landed.
                log.warning("session wallet of %s is empty; recording the %d base units an "
                            "interrupted sweep returned", key.id, expected)
                key.refunded_amount += expected
                emit(s, merchant_id=key.merchant_id, type="session_key.refunded",
                     object_type="session_key", object_id=key.id, now=now,
                     data={**session_key_view(key), "refund_tx_id": None,
                           "refund_amount": amount(expected, key.decimals)})
            outcome = "done" if key.refunded_amount > 0 else "skipped"
        key.refund_status, key.updated_at = outcome, now


async def run_refunds(ctx: AppContext, *, batch: int = BATCH) -> int:
    """Sweep up to `batch` closed session wallets back to their users. Returns how many."""
    claimed = await _claim(ctx, ctx.now(), batch)
    for item in claimed:
        await _record(ctx, item.key.id, await _sweep(ctx, item))
    return len(claimed)
