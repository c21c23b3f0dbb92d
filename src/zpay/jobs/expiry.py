"""Expire session keys and policy sessions whose `expires_at` has passed.

Authorization already refuses an expired key or session inline, scheduler or
not; this sweep makes the expiry visible: the status, the `*.expired` event
(and so the webhook), and `refund_status="pending"` for keys that give what is
left back to the user (see `zpay.jobs.refunds`).
"""

from __future__ import annotations

from sqlalchemy import select

from zpay.domain.lifecycle import KeyStatus, SessionStatus, transition
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.views import policy_session_view, session_key_view
from zpay.store.models import PolicySession, SessionKey

BATCH = 200
MAX_BATCHES = 10  # per tick: a backlog drains over several ticks, never in one long loop
_LIVE = (KeyStatus.PENDING_APPROVAL.value, KeyStatus.ACTIVE.value, KeyStatus.EXHAUSTED.value)


async def expire_keys(ctx: AppContext, *, batch: int = BATCH) -> int:
    """One unit of work: expire up to `batch` due keys. Returns how many."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        keys = (await s.execute(
            select(SessionKey)
            .where(SessionKey.status.in_(_LIVE), SessionKey.expires_at <= now)
            .order_by(SessionKey.expires_at, SessionKey.id).limit(batch)
            .with_for_update(skip_locked=True)
        )).scalars().all()
        for key in keys:
            key.status = transition(KeyStatus(key.status), KeyStatus.EXPIRED).value
            key.updated_at = now
            if key.refund_on_close:
                key.refund_status = "pending"
            emit(s, merchant_id=key.merchant_id, type="session_key.expired",
                 object_type="session_key", object_id=key.id, data=session_key_view(key),
                 now=now)
    return len(keys)


async def expire_sessions(ctx: AppContext, *, batch: int = BATCH) -> int:
    now = ctx.now()
    async with ctx.db.transaction() as s:
        sessions = (await s.execute(
            select(PolicySession)
            .where(PolicySession.status == SessionStatus.ACTIVE.value,
                   PolicySession.expires_at.is_not(None), PolicySession.expires_at <= now)
            .order_by(PolicySession.expires_at, PolicySession.id).limit(batch)
            .with_for_update(skip_locked=True)
        )).scalars().all()
        for session in sessions:
            session.status = SessionStatus.EXPIRED.value
            emit(s, merchant_id=session.merchant_id, type="session.expired",
                 object_type="session", object_id=session.id,
                 data=policy_session_view(session), now=now)
    return len(sessions)


async def expire_due(ctx: AppContext, *, batch: int = BATCH,
                     max_batches: int = MAX_BATCHES) -> int:
    total = 0
    for sweep in (expire_keys, expire_sessions):
        for _ in range(max_batches):
            done = await sweep(ctx, batch=batch)
            total += done
            if done < batch:
                break
    return total
