"""Policy evaluation for the two layers: the funded session key and the linked policy session."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from zpay.domain.windows import Spend, Window, WindowSpec, WindowUsage, window_usage


class Reason:
    """Stable reason codes of refused authorizations (also the audit log's codes)."""

    APPROVED = "approved"
    SESSION_KEY_NOT_ACTIVE = "session_key_not_active"
    SESSION_KEY_PENDING = "session_key_pending_approval"
    SESSION_KEY_EXPIRED = "session_key_expired"
    SESSION_KEY_REVOKED = "session_key_revoked"
    INSUFFICIENT_BALANCE = "insufficient_session_balance"
    SESSION_EXPIRED = "session_expired"
    SESSION_REVOKED = "session_revoked"
    PER_TRANSACTION = "per_transaction_limit"
    DAILY = "daily_limit"
    WEEKLY = "weekly_limit"
    MONTHLY = "monthly_limit"
    TOTAL = "total_limit"
    RECIPIENT = "recipient_not_allowed"
    CHAIN = "chain_not_allowed"
    METHOD = "method_not_allowed"
    ACTIVE_HOURS = "outside_active_hours"
    AGENT_FROZEN = "agent_frozen"


WINDOW_REASON = {Window.DAY: Reason.DAILY, Window.WEEK: Reason.WEEKLY, Window.MONTH: Reason.MONTHLY}


@dataclass(frozen=True)
class KeyState:
    status: str
    expires_at: datetime
    funded: int
    spent: int
    held: int
    refunded: int = 0

    @property
    def remaining(self) -> int:
        return self.funded - self.spent - self.held - self.refunded


@dataclass(frozen=True)
class PolicyLimits:
    max_per_transaction: int | None = None
    max_per_day: int | None = None
    max_per_week: int | None = None
    max_per_month: int | None = None
    max_total: int | None = None
    allowed_recipients: frozenset[str] | None = None
    allowed_chains: frozenset[str] | None = None
    allowed_methods: frozenset[str] | None = None
    active_hours: tuple[int, int] | None = None  # [start, end) local hours
    windows: WindowSpec = field(default_factory=WindowSpec)

    def window_limit(self, window: Window) -> int | None:
        return {Window.DAY: self.max_per_day, Window.WEEK: self.max_per_week,
                Window.MONTH: self.max_per_month}[window]


@dataclass(frozen=True)
class PolicyState:
    status: str  # active | revoked | expired
    expires_at: datetime | None
    limits: PolicyLimits
    total_committed: int  # held + captured, all time
    spends: tuple[Spend, ...] = ()  # held + captured within the longest window
    # The windows as the store keeps them (running totals); when given, `spends` is unused.
    usage: dict[Window, WindowUsage] | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    effective_limit: int  # the most this payment could be right now
    session_key_remaining: int
    window_remaining: dict[Window, int | None]
    window_resets_at: dict[Window, datetime | None]


def check_key(key: KeyState, now: datetime) -> str | None:
    if key.status == "revoked":
        return Reason.SESSION_KEY_REVOKED
    if key.status == "expired" or now >= key.expires_at:
        return Reason.SESSION_KEY_EXPIRED
    if key.status == "pending_approval":
        return Reason.SESSION_KEY_PENDING
    if key.status not in ("active", "exhausted"):
        return Reason.SESSION_KEY_NOT_ACTIVE
    return None


def _check_policy(
    policy: PolicyState, amount: int, *, recipient: str | None, chain: str, method: str,
    now: datetime, window_remaining: dict[Window, int | None],
) -> str | None:
    limits = policy.limits
    if policy.status == "revoked":
        return Reason.SESSION_REVOKED
    if policy.status == "expired" or (policy.expires_at is not None and now >= policy.expires_at):
        return Reason.SESSION_EXPIRED
    if limits.allowed_chains is not None and chain not in limits.allowed_chains:
        return Reason.CHAIN
    if limits.allowed_methods is not None and method not in limits.allowed_methods:
        return Reason.METHOD
    if (limits.allowed_recipients is not None and recipient is not None
            and recipient not in limits.allowed_recipients):
        return Reason.RECIPIENT
    if limits.active_hours is not None:
        from zpay.domain.windows import load_timezone

        hour = now.astimezone(load_timezone(limits.windows.timezone)).hour
        start, end = limits.active_hours
        inside = start <= hour < end if start <= end else (hour >= start or hour < end)
        if not inside:
            return Reason.ACTIVE_HOURS
    if limits.max_per_transaction is not None and amount > limits.max_per_transaction:
        return Reason.PER_TRANSACTION
    for window in Window:
        remaining = window_remaining[window]
        if remaining is not None and amount > remaining:
            return WINDOW_REASON[window]
    if limits.max_total is not None and policy.total_committed + amount > limits.max_total:
        return Reason.TOTAL
    return None


def authorize(
    amount: int,
    *,
    key: KeyState,
    policy: PolicyState | None,
    recipient: str | None,
    chain: str,
    method: str = "transfer",
    now: datetime,
) -> Decision:
    """Both layers must pass. Pure: the caller holds the locks and writes the hold.
    `recipient=None` (a pre-check without one) skips the recipient allow-list."""
    key_remaining = max(key.remaining, 0)
    window_remaining: dict[Window, int | None] = {w: None for w in Window}
    resets: dict[Window, datetime | None] = {w: None for w in Window}
    caps = [key_remaining]
    if policy is not None:
        usage = (policy.usage if policy.usage is not None
                 else window_usage(policy.limits.windows, policy.spends, now))
        for window in Window:
            limit = policy.limits.window_limit(window)
            resets[window] = usage[window].resets_at
            if limit is not None:
                window_remaining[window] = max(limit - usage[window].used, 0)
                caps.append(window_remaining[window] or 0)
        if policy.limits.max_per_transaction is not None:
            caps.append(policy.limits.max_per_transaction)
        if policy.limits.max_total is not None:
            caps.append(max(policy.limits.max_total - policy.total_committed, 0))
    reason = check_key(key, now)
    if reason is None and amount > key_remaining:
        reason = Reason.INSUFFICIENT_BALANCE
    if reason is None and policy is not None:
        reason = _check_policy(policy, amount, recipient=recipient, chain=chain, method=method,
                               now=now, window_remaining=window_remaining)
    return Decision(
        allowed=reason is None,
        reason=reason or Reason.APPROVED,
        effective_limit=min(caps),
        session_key_remaining=key_remaining,
        window_remaining=window_remaining,
        window_resets_at=resets,
    )


def spends_from(rows: Iterable[tuple[datetime, int]]) -> tuple[Spend, ...]:
    return tuple(Spend(at, amount) for at, amount in rows)
