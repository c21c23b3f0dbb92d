"""Limit windows: rolling (last 24 h / 7 d / 30 d) or calendar-aligned in an IANA timezone."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from zpay.domain.errors import InvalidRequest


class WindowMode(enum.StrEnum):
    ROLLING = "rolling"
    CALENDAR = "calendar"


class Window(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


ROLLING_LENGTH = {
    Window.DAY: timedelta(hours=24),
    Window.WEEK: timedelta(days=7),
    Window.MONTH: timedelta(days=30),
}


def load_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidRequest(f"unknown IANA timezone {name!r}", code="invalid_timezone") from exc


@dataclass(frozen=True)
class WindowSpec:
    mode: WindowMode = WindowMode.ROLLING
    timezone: str = "UTC"

    def bounds(self, window: Window, now: datetime) -> tuple[datetime, datetime | None]:
        """Start of the window containing `now`, and (calendar only) when it resets."""
        if self.mode is WindowMode.ROLLING:
            return now - ROLLING_LENGTH[window], None
        local = now.astimezone(load_timezone(self.timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if window is Window.DAY:
            start = midnight
            end = _add_local_days(start, 1)
        elif window is Window.WEEK:
            start = _add_local_days(midnight, -local.weekday())
            end = _add_local_days(start, 7)
        else:
            start = midnight.replace(day=1)
            end = (
                start.replace(year=start.year + 1, month=1)
                if start.month == 12
                else start.replace(month=start.month + 1)
            )
        return start.astimezone(UTC), end.astimezone(UTC)

    def earliest_start(self, now: datetime) -> datetime:
        return min(self.bounds(w, now)[0] for w in Window)


def _add_local_days(local_midnight: datetime, days: int) -> datetime:
    # Wall-clock arithmetic keeps midnight at midnight across DST changes.
    naive = local_midnight.replace(tzinfo=None) + timedelta(days=days)
    return naive.replace(tzinfo=local_midnight.tzinfo)


@dataclass(frozen=True)
class Spend:
    at: datetime
    amount: int


@dataclass(frozen=True)
class WindowUsage:
    window: Window
    used: int
    starts_at: datetime
    resets_at: datetime | None  # calendar: the boundary; rolling: when the oldest spend ages out


@dataclass(frozen=True)
class RunningTotal:
    """One window kept incrementally: `used` is what the counted spending at or after
    `since` adds up to. Moving `since` to the window's start subtracts the spending that
    left the window in between (or adds back what a move backwards brings in)."""

    since: datetime
    used: int

    def crossing(self, start: datetime) -> tuple[datetime, datetime, int] | None:
        """The span [lo, hi) whose spending crosses the boundary when `since` moves to
        `start`, and the sign it takes (-1: it leaves, +1: it comes back); None if none."""
        if start > self.since:
            return self.since, start, -1
        if start < self.since:
            return start, self.since, 1
        return None

    def counts(self, at: datetime) -> bool:
        return at >= self.since


Crossing = tuple[datetime, datetime, int]  # [lo, hi) and the sign its spending takes


def crossings(stored: dict[Window, RunningTotal],
              starts: dict[Window, datetime]) -> dict[Window, Crossing]:
    """The spans whose spending crosses a boundary when each window moves to its start."""
    return {w: c for w in Window if (c := stored[w].crossing(starts[w])) is not None}


def move_totals(stored: dict[Window, RunningTotal], starts: dict[Window, datetime],
          crossed: Iterable[tuple[datetime, int]]) -> dict[Window, RunningTotal]:
    """The totals once each window moved to its start, given the counted spending
    (time, amount) inside the union of the `crossings` spans (others are ignored)."""
    spans = crossings(stored, starts)
    delta = dict.fromkeys(Window, 0)
    for at, amount in crossed:
        for window, (lo, hi, sign) in spans.items():
            if lo <= at < hi:
                delta[window] += sign * amount
    return {w: RunningTotal(starts[w], stored[w].used + delta[w]) for w in Window}


def with_spend(totals: dict[Window, RunningTotal], amount: int,
               at: datetime) -> dict[Window, RunningTotal]:
    """The totals once spending at `at` starts (amount > 0) or stops (< 0) counting: only
    the windows that count its time change."""
    return {w: RunningTotal(t.since, t.used + amount) if t.counts(at) else t
            for w, t in totals.items()}


def window_usage(
    spec: WindowSpec, spends: Iterable[Spend], now: datetime
) -> dict[Window, WindowUsage]:
    """The brute-force reading of every window (the reference the running totals are
    tested against; also what a pure caller with all the spending at hand uses)."""
    spends = list(spends)
    usage: dict[Window, WindowUsage] = {}
    for window in Window:
        start, end = spec.bounds(window, now)
        inside = [s for s in spends if s.at >= start]
        if spec.mode is WindowMode.ROLLING:
            end = (min(s.at for s in inside) + ROLLING_LENGTH[window]) if inside else None
        usage[window] = WindowUsage(window, sum(s.amount for s in inside), start, end)
    return usage
