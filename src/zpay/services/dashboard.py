"""The dashboard's overview: what a merchant wants at a glance, read in one unit of work.

Everything else the dashboard shows comes from the API's own services with a merchant
Principal; only these totals are new. Money is summed here in Python over integer base
units (SQLite keeps them as text, so SUM in SQL would go through a float).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.views import amount, attempt_view
from zpay.store.audit_models import AuditFinding
from zpay.store.models import Agent, Payment, PaymentAttempt, SessionKey

LIVE_KEYS_MAX = 5000  # the totals cover at most this many live keys (newest first)
RECENT_REFUSALS = 5
_LIVE = (KeyStatus.ACTIVE.value, KeyStatus.EXHAUSTED.value)


@dataclass
class _Totals:
    decimals: int
    funded: int = 0
    spent: int = 0
    held: int = 0
    remaining: int = 0
    paid_24h: int = 0


async def overview(ctx: AppContext, principal: Principal) -> dict[str, Any]:
    principal.require_merchant("read the dashboard")
    mid = principal.merchant_id
    since = ctx.now() - timedelta(hours=24)
    async with ctx.db.sessions() as s:
        agents = Counter(dict((await s.execute(
            select(Agent.status, func.count()).where(Agent.merchant_id == mid,
                                                     Agent.status != "deleted")
            .group_by(Agent.status))).all()))
        keys = Counter(dict((await s.execute(
            select(SessionKey.status, func.count()).where(SessionKey.merchant_id == mid)
            .group_by(SessionKey.status))).all()))
        live = (await s.execute(
            select(SessionKey.token_symbol, SessionKey.decimals, SessionKey.funded_amount,
                   SessionKey.spent_amount, SessionKey.held_amount, SessionKey.refunded_amount)
            .where(SessionKey.merchant_id == mid, SessionKey.status.in_(_LIVE))
            .order_by(SessionKey.id.desc()).limit(LIVE_KEYS_MAX))).all()
        paid = (await s.execute(
            select(SessionKey.token_symbol, SessionKey.decimals, Payment.amount)
            .join(SessionKey, SessionKey.id == Payment.session_key_id)
            .where(Payment.merchant_id == mid, Payment.created_at >= since,
                   Payment.status == PaymentStatus.SUCCEEDED.value))).all()
        refused = (await s.execute(
            select(func.count()).select_from(PaymentAttempt)
            .where(PaymentAttempt.merchant_id == mid, PaymentAttempt.allowed.is_(False),
                   PaymentAttempt.created_at >= since))).scalar_one()
        recent_refusals = (await s.execute(
            select(PaymentAttempt, SessionKey.decimals, SessionKey.token_symbol)
            .join(SessionKey, SessionKey.id == PaymentAttempt.session_key_id)
            .where(PaymentAttempt.merchant_id == mid, PaymentAttempt.allowed.is_(False))
            .order_by(PaymentAttempt.id.desc()).limit(RECENT_REFUSALS))).all()
        differences = (await s.execute(
            select(func.count()).select_from(AuditFinding)
            .where(AuditFinding.merchant_id == mid,
                   AuditFinding.state == "difference"))).scalar_one()
    totals: dict[str, _Totals] = {}
    for symbol, decimals, funded, spent, held, refunded in live:
        t = totals.setdefault(symbol, _Totals(decimals))
        t.funded += funded
        t.spent += spent
        t.held += held
        t.remaining += funded - spent - held - refunded
    for symbol, decimals, value in paid:
        totals.setdefault(symbol, _Totals(decimals)).paid_24h += value
    paid_count = len(paid)
    return {
        "agents": {"active": agents.get("active", 0), "frozen": agents.get("frozen", 0)},
        "session_keys": dict(keys),
        "live_keys": sum(keys.get(status, 0) for status in _LIVE),
        "money": [{"token": symbol, "funded": amount(t.funded, t.decimals),
                   "spent": amount(t.spent, t.decimals), "held": amount(t.held, t.decimals),
                   "remaining": amount(t.remaining, t.decimals),
                   "paid_24h": amount(t.paid_24h, t.decimals)}
                  for symbol, t in sorted(totals.items())],
        "payments_24h": paid_count,
        "refused_24h": refused,
        "recent_refusals": [{**attempt_view(a, decimals), "token": symbol}
                            for a, decimals, symbol in recent_refusals],
        "audit_differences": differences,
        "truncated": len(live) == LIVE_KEYS_MAX,
    }
