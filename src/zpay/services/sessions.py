"""Policy sessions: limits bound to an agent; their windows count every linked key's spending."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.domain import tokens
from zpay.domain.errors import Conflict, InvalidRequest, NotFound
from zpay.domain.lifecycle import SessionStatus
from zpay.domain.money import parse_amount
from zpay.domain.policy import PolicyLimits, PolicyState
from zpay.domain.windows import RunningTotal, Window, WindowMode, WindowSpec, load_timezone
from zpay.services import fields as f
from zpay.services import windows as policy_windows
from zpay.services.agents import load_agent
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page, page_body
from zpay.services.recipients import validate_allowed_recipients
from zpay.services.requests import Request
from zpay.services.tenancy import copy_owned, fetch_owned, visible
from zpay.services.views import amount, policy_session_view, ts
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import Merchant, PolicySession, SessionKey

DEFAULT_TOKEN = ("USDC", 6)
_LIMIT_FIELDS = ("max_per_transaction", "max_per_day", "max_per_week", "max_per_month",
                 "max_total")
MAX_LIMIT_BASE_UNITS = 2**256 - 1


class SessionRequest(Request):
    agent_id: f.Id
    user_wallet: f.Address | None = None
    token: f.Symbol = "USDC"
    max_per_transaction: f.Amount | None = None
    max_per_day: f.Amount | None = None
    max_per_week: f.Amount | None = None
    max_per_month: f.Amount | None = None
    max_total: f.Amount | None = None
    allowed_recipients: f.Recipients | None = None
    allowed_chains: f.ChainNames | None = None
    allowed_methods: f.Methods | None = None
    active_hours: list[int] | None = None
    window_mode: f.WindowModeName = "rolling"
    timezone: f.Timezone = "UTC"
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None


def resolve_expiry(now: datetime, expires_at: datetime | None, expires_in_seconds: int | None,
                   *, required: bool) -> datetime | None:
    if expires_at is not None and expires_in_seconds is not None:
        raise InvalidRequest("give expires_at or expires_in_seconds, not both",
                             code="invalid_expiry")
    if expires_in_seconds is not None:
        if not 60 <= expires_in_seconds <= 366 * 86400:
            raise InvalidRequest("expires_in_seconds must be between 60 and one year",
                                 code="invalid_expiry")
        return now + timedelta(seconds=expires_in_seconds)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidRequest("expires_at needs a timezone offset", code="invalid_expiry")
        if expires_at <= now:
            raise InvalidRequest("expires_at is in the past", code="invalid_expiry")
        return expires_at
    if required:
        raise InvalidRequest("an expiry is required (expires_at or expires_in_seconds)",
                             code="invalid_expiry")
    return None


def limits_of(s: PolicySession) -> PolicyLimits:
    def fs(values: list[str] | None) -> frozenset[str] | None:
        return frozenset(values) if values is not None else None

    hours = s.active_hours
    return PolicyLimits(
        max_per_transaction=s.max_per_transaction, max_per_day=s.max_per_day,
        max_per_week=s.max_per_week, max_per_month=s.max_per_month, max_total=s.max_total,
        allowed_recipients=fs(s.allowed_recipients), allowed_chains=fs(s.allowed_chains),
        allowed_methods=fs(s.allowed_methods),
        active_hours=(hours[0], hours[1]) if hours else None,
        windows=WindowSpec(WindowMode(s.window_mode), s.timezone),
    )


async def policy_state(s: Executor, policy: PolicySession, now: datetime,
                       totals: dict[Window, RunningTotal] | None = None) -> PolicyState:
    """The session as the policy check reads it at `now`. Its windows come from the running
    totals on its row (services.windows): the cost does not grow with its history.
    `totals`: already moved to `now` by the caller (which then writes them)."""
    limits = limits_of(policy)
    if totals is None:
        totals = await policy_windows.moved(s, policy, limits.windows, now)
    return PolicyState(status=policy.status, expires_at=policy.expires_at, limits=limits,
                       total_committed=policy.total_committed,
                       usage=policy_windows.usage(limits.windows, totals, now))


async def load_session(s: AsyncSession, principal: Principal, session_id: str,
                       *, lock: bool = False) -> PolicySession:
    return _owned_session(principal, session_id,
                          await fetch_owned(s, PolicySession, session_id, principal, lock=lock))


async def read_session(x: Executor, principal: Principal, session_id: str) -> PolicySession:
    """`load_session` on the hot path's executors, as a transient copy."""
    return _owned_session(principal, session_id,
                          await copy_owned(x, PolicySession, session_id, principal))


def _owned_session(principal: Principal, session_id: str,
                   row: PolicySession | None) -> PolicySession:
    if row is None or (principal.agent_id is not None and row.agent_id != principal.agent_id):
        raise NotFound(f"no session {session_id!r}", code="session_not_found")
    return row


async def create_session(ctx: AppContext, principal: Principal,
                         req: SessionRequest) -> dict[str, Any]:
    principal.require_merchant("create sessions")
    now = ctx.now()
    if req.token != DEFAULT_TOKEN[0]:
        raise InvalidRequest(f"unknown token {req.token!r}; supported: USDC", code="unknown_token")
    decimals = DEFAULT_TOKEN[1]
    limits = {f: (parse_amount(v, decimals=decimals, max_base_units=MAX_LIMIT_BASE_UNITS)
                  if (v := getattr(req, f)) is not None else None) for f in _LIMIT_FIELDS}
    try:
        mode = WindowMode(req.window_mode)
    except ValueError:
        raise InvalidRequest("window_mode must be 'rolling' or 'calendar'",
                             code="invalid_window_mode") from None
    load_timezone(req.timezone)
    if req.active_hours is not None and (
        len(req.active_hours) != 2 or not all(0 <= h <= 24 for h in req.active_hours)
        or req.active_hours[0] == req.active_hours[1]  # empty or all day: ambiguous
    ):
        raise InvalidRequest("active_hours is [start_hour, end_hour] in 0..24, start != end "
                             "(use [0, 24] for all day)", code="invalid_active_hours")
    if req.allowed_chains is not None:
        for chain in req.allowed_chains:
            ctx.chains.get(chain)
    recipients = req.allowed_recipients
    if recipients is not None:  # addresses of the session's chains, stored canonical
        recipients = validate_allowed_recipients(
            [ctx.chains.get(c) for c in req.allowed_chains] if req.allowed_chains is not None
            else ctx.chains.adapters.values(), recipients)
    expires_at = resolve_expiry(now, req.expires_at, req.expires_in_seconds, required=False)
    async with ctx.db.transaction() as s:
        await load_agent(s, principal, req.agent_id)
        merchant = await s.get(Merchant, principal.merchant_id)
        assert merchant is not None
        token = tokens.generate("as", merchant.environment)
        policy = PolicySession(
            id=new_id("ses"), merchant_id=principal.merchant_id, agent_id=req.agent_id,
            user_wallet=req.user_wallet, token_symbol=req.token, decimals=decimals, **limits,
            allowed_recipients=recipients, allowed_chains=req.allowed_chains,
            allowed_methods=req.allowed_methods, active_hours=req.active_hours,
            window_mode=mode.value, timezone=req.timezone, total_committed=0,
            **policy_windows.values({w: RunningTotal(now, 0) for w in Window}),
            status=SessionStatus.ACTIVE.value, token_hash=tokens.token_hash(token),
            expires_at=expires_at, created_at=now, revoked_at=None)
        s.add(policy)
        emit(s, merchant_id=principal.merchant_id, type="session.created", object_type="session",
             object_id=policy.id, data=policy_session_view(policy), now=now)
    # `access_token`, not `token`: a session's `token` is the token symbol it limits.
    return {**(await _status_body(ctx, policy)), "access_token": token}


async def _status_body(ctx: AppContext, policy: PolicySession) -> dict[str, Any]:
    now = ctx.now()
    async with ctx.db.sessions() as s:
        spec = limits_of(policy).windows
        totals = await policy_windows.moved(s, policy, spec, now)
        state = await policy_state(s, policy, now, totals)
        oldest = await policy_windows.oldest_counted(s, policy.id, totals)
        key_ids = (await s.execute(select(SessionKey.id).where(
            SessionKey.policy_session_id == policy.id))).scalars().all()
    usage = policy_windows.usage(spec, totals, now, oldest)
    d = policy.decimals
    windows = {}
    for window in Window:
        limit = state.limits.window_limit(window)
        u = usage[window]
        windows[window.value] = {
            "limit": amount(limit, d), "used": amount(u.used, d),
            "remaining": amount(max(limit - u.used, 0), d) if limit is not None else None,
            "window_start": ts(u.starts_at), "frees_up_at": ts(u.resets_at),
        }
    body = policy_session_view(policy)
    body["status"] = "expired" if (policy.status == "active" and policy.expires_at is not None
                                   and now >= policy.expires_at) else policy.status
    body["windows"] = {"mode": policy.window_mode, "timezone": policy.timezone, **windows}
    body["linked_session_key_ids"] = list(key_ids)
    return body


async def get_session(ctx: AppContext, principal: Principal, session_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        policy = await load_session(s, principal, session_id)
    return await _status_body(ctx, policy)


async def list_sessions(ctx: AppContext, principal: Principal, page: Page,
                        agent_id: str | None = None) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        stmt = visible(PolicySession, principal)
        if agent_id is not None:
            stmt = stmt.where(PolicySession.agent_id == agent_id)
        rows = (await s.execute(page.apply(stmt, PolicySession.id))).scalars().all()
    return page_body(rows, page, policy_session_view)


async def revoke_session(ctx: AppContext, principal: Principal, session_id: str) -> dict[str, Any]:
    principal.require_merchant("revoke sessions")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        policy = await load_session(s, principal, session_id, lock=True)
        if policy.status == SessionStatus.REVOKED:
            raise Conflict("session already revoked", code="session_revoked")
        policy.status, policy.revoked_at = SessionStatus.REVOKED.value, now
        emit(s, merchant_id=policy.merchant_id, type="session.revoked", object_type="session",
             object_id=policy.id, data=policy_session_view(policy), now=now)
    return await _status_body(ctx, policy)
