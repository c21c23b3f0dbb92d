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


def window_usage(
    spec: WindowSpec, spends: Iterable[Spend], now: datetime
) -> dict[Window, WindowUsage]:
    spends = list(spends)
    usage: dict[Window, WindowUsage] = {}
    for window in Window:
        start, end = spec.bounds(window, now)
        inside = [s for s in spends if s.at >= start]
        if spec.mode is WindowMode.ROLLING:
            end = (min(s.at for s in inside) + ROLLING_LENGTH[window]) if inside else None
        usage[window] = WindowUsage(window, sum(s.amount for s in inside), start, end)
    return usage
