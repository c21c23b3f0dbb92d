"""The continuous audit, as a job: books against chain, a bounded batch of wallets per run.

Every `audit_interval_s` (`ZPAY_AUDIT_INTERVAL_S`, default 60 s, not every scheduler
tick: each wallet costs a balance read on the chain's RPC) the job

1. enrols keys that now have money (an `audit_findings` row, never checked yet);
2. claims up to `BATCH` rows, least recently checked first (never-checked first), with
   `FOR UPDATE SKIP LOCKED`, and moves their `checked_at` to now: the next claim, on any
   worker, takes other wallets, so a large book is visited round-robin. A wallet is due
   again after half the interval (several workers do not multiply the RPC load); a closed
   wallet whose books are settled and last agreed with the chain, only after
   `SETTLED_RECHECK`;
3. reads the books, then the chain (no transaction open), then records the verdicts and
   their `audit.mismatch` / `audit.resolved` events (`zpay.services.audit.record`).

At most `MAX_BATCHES` batches per run; a larger book takes several runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select

from zpay.domain.audit import AuditState
from zpay.domain.lifecycle import KeyStatus
from zpay.services.audit import Snapshot, enrol, read_snapshots, record
from zpay.services.context import AppContext
from zpay.store.audit_models import AuditFinding
from zpay.store.models import SessionKey

BATCH = 50
MAX_BATCHES = 4  # per run
SETTLED_RECHECK = timedelta(hours=24)
_CLOSED = (KeyStatus.EXPIRED.value, KeyStatus.REVOKED.value)


async def _claim(ctx: AppContext, now: datetime, batch: int) -> dict[str, Snapshot]:
    recheck = timedelta(seconds=ctx.settings.audit_interval_s) / 2
    settled = and_(
        SessionKey.status.in_(_CLOSED),
        SessionKey.held_amount == 0,
        or_(SessionKey.refund_status.is_(None), SessionKey.refund_status.in_(("done", "skipped"))),
        AuditFinding.state == AuditState.CONSISTENT.value,
    )
    due = or_(
        AuditFinding.checked_at.is_(None),
        and_(~settled, AuditFinding.checked_at < now - recheck),
        AuditFinding.checked_at < now - SETTLED_RECHECK,
    )
    async with ctx.db.transaction() as s:
        rows = (
            (
                await s.execute(
                    select(AuditFinding)
                    .join(SessionKey, SessionKey.id == AuditFinding.session_key_id)
                    .where(due)
                    .order_by(
                        AuditFinding.checked_at.asc().nulls_first(), AuditFinding.session_key_id
                    )
                    .limit(batch)
                    .with_for_update(skip_locked=True, of=AuditFinding)
                )
            )
            .scalars()
            .all()
        )
        for row in rows:
            row.checked_at = now
        return await read_snapshots(s, [row.session_key_id for row in rows])


async def run_audit(ctx: AppContext, *, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> int:
    """Audit up to `batch * max_batches` due session wallets. Returns how many."""
    now = ctx.now()
    await enrol(ctx)
    audited = 0
    for _ in range(max_batches):
        before = await _claim(ctx, now, batch)
        if before:
            audited += len(await record(ctx, before))
        if len(before) < batch:
            break
    return audited
