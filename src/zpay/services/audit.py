"""The continuous audit: every session wallet's books against its balance on chain.

Per session key that has or had money (funded, or an approval that may have moved funds),
the books say the wallet holds `funded - spent - refunded`: zpay pays every fee, so a
session wallet never spends anything on gas, and only approvals, payments and the refund
sweep move its balance. The chain's balance is read between two snapshots of the books
and judged by `zpay.domain.audit.judge` (what is in flight makes a band, not a point).

A chain that cannot be read is `unreadable`: never a difference, never OK.

Three ways in, one judgement:
- the scheduled job (`zpay.jobs.audit`) visits keys round-robin and RECORDS: the last
  result per key in `audit_findings`, an `audit.mismatch` event when a difference appears
  or changes and `audit.resolved` when the chain agrees with settled books again;
- `zpay audit` runs over every key of every merchant and records the same way;
- `GET /v1/audit` reads live, one page of the merchant's keys, and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import ChainError
from zpay.domain.audit import AuditState, Books, Report, Verdict, judge, report_for
from zpay.domain.errors import ZpayError
from zpay.domain.lifecycle import PaymentStatus
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page
from zpay.services.session_keys import token_of
from zpay.services.views import amount, ts
from zpay.store.audit_models import AuditFinding
from zpay.store.models import Approval, Payment, SessionKey

log = logging.getLogger(__name__)

RECENT_PAYMENTS = 5  # shown with a difference, besides the ones in flight
CHAIN_READS = 8  # balance reads in flight at once
ENROL_BATCH = 500
_FINAL_PAYMENT = (PaymentStatus.SUCCEEDED.value, PaymentStatus.FAILED.value)
_MOVED_NOTHING = ("pending", "superseded", "expired")  # approval statuses
_APPROVAL_IN_FLIGHT = "submitting"
_REFUND_IN_FLIGHT = ("sweeping", "retrying")


def auditable() -> ColumnElement[bool]:
    """Session keys that have or had money: funded, or an approval that may have moved."""
    return or_(
        SessionKey.funded_amount > 0,
        exists().where(
            Approval.session_key_id == SessionKey.id, Approval.status.not_in(_MOVED_NOTHING)
        ),
    )


@dataclass(frozen=True)
class Movement:
    """A payment or approval of the key, as the audit shows it."""

    id: str
    status: str
    amount: int
    created_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """One session key's books at one instant, with what is in flight."""

    key: SessionKey  # detached: read-only outside its session
    books: Books
    payments: tuple[Movement, ...]  # not final yet
    approvals: tuple[Movement, ...]  # submitting


@dataclass(frozen=True)
class Unreadable:
    code: str


@dataclass(frozen=True)
class Finding:
    snapshot: Snapshot  # the later one
    state: AuditState
    verdict: Verdict | None  # None when unreadable
    error_code: str | None
    checked_at: datetime
    recent_payments: tuple[Movement, ...] = ()
    reported_difference: int | None = None
    reported_at: datetime | None = None


# ------------------------------------------------------------------ reading


async def read_snapshots(s: AsyncSession, key_ids: Iterable[str]) -> dict[str, Snapshot]:
    ids = sorted(set(key_ids))
    if not ids:
        return {}
    keys = (await s.execute(select(SessionKey).where(SessionKey.id.in_(ids)))).scalars().all()
    payments: dict[str, list[Movement]] = defaultdict(list)
    for row in (
        await s.execute(
            select(
                Payment.session_key_id,
                Payment.id,
                Payment.status,
                Payment.amount,
                Payment.created_at,
            )
            .where(Payment.session_key_id.in_(ids), Payment.status.not_in(_FINAL_PAYMENT))
            .order_by(Payment.id)
        )
    ).all():
        payments[row[0]].append(Movement(row[1], row[2], row[3], row[4]))
    approvals: dict[str, list[Movement]] = defaultdict(list)
    for row in (
        await s.execute(
            select(
                Approval.session_key_id,
                Approval.id,
                Approval.status,
                Approval.amount,
                Approval.created_at,
            )
            .where(Approval.session_key_id.in_(ids), Approval.status == _APPROVAL_IN_FLIGHT)
            .order_by(Approval.id)
        )
    ).all():
        approvals[row[0]].append(Movement(row[1], row[2], row[3], row[4]))
    return {
        key.id: Snapshot(
            key=key,
            books=Books(
                funded=key.funded_amount,
                spent=key.spent_amount,
                held=key.held_amount,
                refunded=key.refunded_amount,
                approvals_in_flight=sum(a.amount for a in approvals[key.id]),
                refund_in_flight=key.refund_status in _REFUND_IN_FLIGHT,
            ),
            payments=tuple(payments[key.id]),
            approvals=tuple(approvals[key.id]),
        )
        for key in keys
    }


async def read_balances(
    ctx: AppContext, snapshots: Iterable[Snapshot], *, unopened: Mapping[str, str] | None = None
) -> dict[str, int | Unreadable]:
    """Each wallet's token balance on chain, or why it could not be read. `unopened`: the
    chains this process could not open, with the reason (`zpay audit`)."""
    unopened = unopened or {}
    slots = asyncio.Semaphore(CHAIN_READS)
    failures: Counter[tuple[str, str]] = Counter()

    async def one(key: SessionKey) -> int | Unreadable:
        if key.chain in unopened:
            return Unreadable(unopened[key.chain])
        async with slots:
            try:
                adapter = ctx.chains.get(key.chain)
                return await adapter.balance(key.address, token_of(key, adapter))
            except (ChainError, ZpayError) as exc:
                failures[(key.chain, exc.code)] += 1
                return Unreadable(exc.code)

    keys = [snap.key for snap in snapshots]
    balances = await asyncio.gather(*(one(key) for key in keys))
    for (chain, code), count in sorted(failures.items()):
        log.warning(
            "audit: %d session wallet balances on %s could not be read (%s)", count, chain, code
        )
    return {key.id: balance for key, balance in zip(keys, balances, strict=True)}


async def _recent_payments(s: AsyncSession, key_id: str) -> tuple[Movement, ...]:
    rows = (
        await s.execute(
            select(Payment.id, Payment.status, Payment.amount, Payment.created_at)
            .where(Payment.session_key_id == key_id)
            .order_by(Payment.id.desc())
            .limit(RECENT_PAYMENTS)
        )
    ).all()
    return tuple(Movement(*row) for row in rows)


async def _judge_all(
    s: AsyncSession,
    before: Mapping[str, Snapshot],
    balances: Mapping[str, int | Unreadable],
    now: datetime,
) -> list[Finding]:
    """Judge each chain balance against the books before and after it was read (the
    later snapshot is read here, in `s`)."""
    after = await read_snapshots(s, before)
    findings = []
    for key_id in sorted(before):
        later = after.get(key_id)
        if later is None:
            continue
        balance = balances[key_id]
        if isinstance(balance, Unreadable):
            findings.append(Finding(later, AuditState.UNREADABLE, None, balance.code, now))
            continue
        verdict = judge(before[key_id].books, balance, later.books)
        recent = await _recent_payments(s, key_id) if verdict.state is AuditState.DIFFERENCE else ()
        findings.append(Finding(later, verdict.state, verdict, None, now, recent))
    return findings


# ------------------------------------------------------------------ live (API)


async def audit_live(
    ctx: AppContext, key_ids: Sequence[str], *, unopened: Mapping[str, str] | None = None
) -> list[Finding]:
    """Audit these keys now and write nothing. Shows what was last reported, if anything."""
    async with ctx.db.sessions() as s:
        before = await read_snapshots(s, key_ids)
    balances = await read_balances(ctx, before.values(), unopened=unopened)
    async with ctx.db.sessions() as s:
        findings = await _judge_all(s, before, balances, ctx.now())
        reported = {
            row.session_key_id: row
            for row in (
                await s.execute(
                    select(AuditFinding).where(AuditFinding.session_key_id.in_(list(before)))
                )
            ).scalars()
        }
    order = {key_id: i for i, key_id in enumerate(key_ids)}
    out = []
    for f in sorted(findings, key=lambda f: order[f.snapshot.key.id]):
        row = reported.get(f.snapshot.key.id)
        if row is not None:
            f = replace(f, reported_difference=row.reported_difference, reported_at=row.reported_at)
        out.append(f)
    return out


async def list_findings(
    ctx: AppContext, principal: Principal, page: Page, session_key_id: str | None = None
) -> dict[str, Any]:
    """`GET /v1/audit`: one page of the merchant's audited keys, audited live."""
    principal.require_merchant("read the audit")
    stmt = select(SessionKey.id).where(SessionKey.merchant_id == principal.merchant_id, auditable())
    if session_key_id is not None:
        stmt = stmt.where(SessionKey.id == session_key_id)
    async with ctx.db.sessions() as s:
        ids = list((await s.execute(page.apply(stmt, SessionKey.id))).scalars())
    has_more = len(ids) > page.limit
    ids = ids[: page.limit]
    findings = await audit_live(ctx, ids)
    return {
        "object": "list",
        "data": [finding_view(f) for f in findings],
        "has_more": has_more,
        "next_cursor": ids[-1] if has_more and ids else None,
    }


# ------------------------------------------------------------------ recording


async def enrol(
    ctx: AppContext, *, key_ids: Sequence[str] | None = None, batch: int = ENROL_BATCH
) -> int:
    """Give auditable keys without one an `audit_findings` row (never checked yet)."""
    now = ctx.now()
    stmt = (
        select(SessionKey.id, SessionKey.merchant_id)
        .where(auditable(), ~exists().where(AuditFinding.session_key_id == SessionKey.id))
        .order_by(SessionKey.id)
        .limit(batch)
    )
    if key_ids is not None:
        stmt = stmt.where(SessionKey.id.in_(key_ids))
    try:
        async with ctx.db.transaction() as s:
            rows = (await s.execute(stmt)).all()
            s.add_all(
                AuditFinding(session_key_id=key_id, merchant_id=merchant_id, created_at=now)
                for key_id, merchant_id in rows
            )
    except IntegrityError:
        return 0  # another worker enrolled some of them at the same time: next run
    return len(rows)


async def record(
    ctx: AppContext, before: Mapping[str, Snapshot], *, unopened: Mapping[str, str] | None = None
) -> list[Finding]:
    """Read the chain for these snapshots, judge, store the results and emit the events
    they call for, in one unit of work (the outbox rows commit with the findings)."""
    balances = await read_balances(ctx, before.values(), unopened=unopened)
    now = ctx.now()
    async with ctx.db.transaction() as s:
        rows = {
            row.session_key_id: row
            for row in (
                await s.execute(
                    select(AuditFinding)
                    .where(AuditFinding.session_key_id.in_(sorted(before)))
                    .order_by(AuditFinding.session_key_id)
                    .with_for_update()
                )
            ).scalars()
        }
        findings = await _judge_all(s, before, balances, now)
        out = []
        for f in findings:
            key = f.snapshot.key
            row = rows.get(key.id)
            if row is None:
                row = AuditFinding(
                    session_key_id=key.id, merchant_id=key.merchant_id, created_at=now
                )
                s.add(row)
            out.append(_store(s, row, f, now))
    return out


def _store(s: AsyncSession, row: AuditFinding, f: Finding, now: datetime) -> Finding:
    verdict = f.verdict
    row.state, row.checked_at, row.error_code = f.state.value, now, f.error_code
    row.expected = f.snapshot.books.expected
    row.on_chain = verdict.on_chain if verdict else None
    row.difference = verdict.difference if verdict else None
    report = report_for(verdict, row.reported_difference) if verdict else None
    previous = row.reported_difference
    if report is not None:
        assert verdict is not None
        row.reported_difference = verdict.difference if report is Report.MISMATCH else None
        row.reported_at = now
    f = replace(f, reported_difference=row.reported_difference, reported_at=row.reported_at)
    if report is not None:
        key = f.snapshot.key
        emit(
            s,
            merchant_id=key.merchant_id,
            type=report.value,
            object_type="session_key",
            object_id=key.id,
            now=now,
            data={**finding_view(f), "previous_difference": amount(previous, key.decimals)},
        )
    return f


async def audit_everything(
    ctx: AppContext, *, batch: int = 100, unopened: Mapping[str, str] | None = None
) -> list[Finding]:
    """`zpay audit`: every auditable key of every merchant, `batch` at a time, recorded."""
    findings: list[Finding] = []
    after: str | None = None
    while True:
        stmt = select(SessionKey.id).where(auditable()).order_by(SessionKey.id).limit(batch)
        if after is not None:
            stmt = stmt.where(SessionKey.id > after)
        async with ctx.db.sessions() as s:
            ids = list((await s.execute(stmt)).scalars())
        if not ids:
            return findings
        await enrol(ctx, key_ids=ids)
        async with ctx.db.sessions() as s:
            before = await read_snapshots(s, ids)
        findings += await record(ctx, before, unopened=unopened)
        after = ids[-1]


# ------------------------------------------------------------------ views


def summary(findings: Iterable[Finding]) -> Counter[AuditState]:
    return Counter(f.state for f in findings)


def _movement_view(m: Movement, decimals: int) -> dict[str, Any]:
    return {
        "id": m.id,
        "status": m.status,
        "amount": amount(m.amount, decimals),
        "created_at": ts(m.created_at),
    }


def finding_view(f: Finding) -> dict[str, Any]:
    key, books, verdict = f.snapshot.key, f.snapshot.books, f.verdict
    d = key.decimals
    return {
        "object": "audit_finding",
        "session_key_id": key.id,
        "merchant_id": key.merchant_id,
        "chain": key.chain,
        "token": key.token_symbol,
        "address": key.address,
        "key_status": key.status,
        "state": f.state.value,
        "funded_amount": amount(books.funded, d),
        "spent_amount": amount(books.spent, d),
        "held_amount": amount(books.held, d),
        "refunded_amount": amount(books.refunded, d),
        "expected_amount": amount(books.expected, d),
        "on_chain_amount": amount(verdict.on_chain, d) if verdict else None,
        "difference": amount(verdict.difference, d) if verdict else None,
        # What the chain may show while things are in flight (equal to expected otherwise).
        "expected_min": amount(verdict.lowest if verdict else books.lowest, d),
        "expected_max": amount(verdict.highest if verdict else books.highest, d),
        "in_flight": [r.value for r in verdict.in_flight]
        if verdict
        else [r.value for r in books.in_flight],
        "payments": [_movement_view(p, d) for p in f.snapshot.payments],
        "approvals": [_movement_view(a, d) for a in f.snapshot.approvals],
        "recent_payments": [_movement_view(p, d) for p in f.recent_payments],
        "refund_status": key.refund_status,
        "error_code": f.error_code,
        "reported_difference": amount(f.reported_difference, d),
        "reported_at": ts(f.reported_at),
        "checked_at": ts(f.checked_at),
    }
