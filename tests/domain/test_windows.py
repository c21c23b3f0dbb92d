"""Windows kept as running totals equal a brute-force recount, whatever the history:
random payments, releases and late captures, clocks that jump (also backwards), rolling
and calendar windows across DST changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from zpay.domain.windows import (
    RunningTotal,
    Spend,
    Window,
    WindowMode,
    WindowSpec,
    crossings,
    move_totals,
    window_usage,
    with_spend,
)

# Just before DST changes: New York springs forward 2026-03-08 and falls back 2026-11-01;
# Berlin 2026-03-29 / 2026-10-25; Lord Howe moves by 30 minutes; Kolkata has no DST.
STARTS = [datetime(2026, 3, 6, 15, 0, tzinfo=UTC), datetime(2026, 10, 30, 3, 30, tzinfo=UTC),
          datetime(2026, 3, 27, 22, 0, tzinfo=UTC), datetime(2026, 10, 23, 23, 59, tzinfo=UTC),
          datetime(2026, 4, 3, 12, 0, tzinfo=UTC), datetime(2026, 1, 30, 0, 0, tzinfo=UTC)]
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]


@dataclass
class Row:
    at: datetime
    amount: int
    counted: bool


class Store:
    """What the database holds (payments) and what the policy row keeps (totals); the
    moves are the service's (services.windows), with the SQL range read done in memory."""

    def __init__(self, spec: WindowSpec, now: datetime) -> None:
        self.spec = spec
        self.rows: list[Row] = []
        self.totals = {w: RunningTotal(now, 0) for w in Window}

    def move(self, now: datetime) -> None:
        starts = {w: self.spec.bounds(w, now)[0] for w in Window}
        spans = crossings(self.totals, starts).values()
        crossed = [(r.at, r.amount) for r in self.rows
                   if r.counted and any(lo <= r.at < hi for lo, hi, _ in spans)]
        self.totals = move_totals(self.totals, starts, crossed)

    def pay(self, now: datetime, amount: int) -> None:
        self.move(now)
        self.rows.append(Row(now, amount, True))
        self.totals = with_spend(self.totals, amount, now)

    def flip(self, index: int) -> None:
        """Release a counted payment, or capture late a released one (no move)."""
        row = self.rows[index]
        row.counted = not row.counted
        self.totals = with_spend(self.totals, row.amount if row.counted else -row.amount,
                                 row.at)

    def check_against_recount(self, now: datetime) -> None:
        counted = [Spend(r.at, r.amount) for r in self.rows if r.counted]
        # The invariant at every moment: `used` is the counted spending since `since`.
        for window, total in self.totals.items():
            assert total.used == sum(s.amount for s in counted if s.at >= total.since), window
        self.move(now)
        recount = window_usage(self.spec, counted, now)
        assert {w: t.used for w, t in self.totals.items()} == {
            w: u.used for w, u in recount.items()}


step = st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 3 * 86400), st.integers(1, 10**12)),
    st.tuples(st.just("flip"), st.integers(0, 6 * 3600), st.integers(0, 10**6)),
    # A process whose clock is behind (or a request that waited for the lock).
    st.tuples(st.just("pay"), st.integers(-120, 0), st.integers(1, 10**6)),
    st.tuples(st.just("idle"), st.integers(0, 40 * 86400), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(list(WindowMode)), zone=st.sampled_from(ZONES),
       start=st.sampled_from(STARTS), steps=st.lists(step, max_size=60))
def test_running_totals_equal_a_recount(mode: WindowMode, zone: str, start: datetime,
                                        steps: list[tuple[str, int, int]]) -> None:
    store = Store(WindowSpec(mode, zone), start)
    now = start
    for action, seconds, value in steps:
        now += timedelta(seconds=seconds)
        if action == "pay":
            store.pay(now, value)
        elif action == "flip" and store.rows:
            store.flip(value % len(store.rows))
        store.check_against_recount(now)


def test_each_payment_leaves_each_window_once() -> None:
    """Moving a window reads only the span that crossed its start since the last move."""
    spec = WindowSpec(WindowMode.ROLLING, "UTC")
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    store = Store(spec, t0)
    for minute in range(0, 60 * 24 * 40, 30):  # 40 days, a payment every 30 minutes
        store.pay(t0 + timedelta(minutes=minute), 1)
    later = t0 + timedelta(days=40)
    before = dict(store.totals)
    spans = crossings(before, {w: spec.bounds(w, later)[0] for w in Window})
    lo, hi, sign = spans[Window.DAY]
    assert (hi - lo, sign) == (timedelta(minutes=30), -1)
    store.check_against_recount(later)
    assert store.totals[Window.DAY].used == 48 and store.totals[Window.MONTH].used == 1440


def test_calendar_day_across_spring_forward_is_23_hours() -> None:
    spec = WindowSpec(WindowMode.CALENDAR, "America/New_York")
    store = Store(spec, datetime(2026, 3, 8, 4, 0, tzinfo=UTC))  # 23:00 on the 7th, local
    store.pay(datetime(2026, 3, 8, 4, 30, tzinfo=UTC), 5)  # 23:30 on the 7th
    store.pay(datetime(2026, 3, 8, 5, 30, tzinfo=UTC), 7)  # 00:30 on the 8th
    # 23:59 local on the 8th (EDT now): 23 hours after that midnight, still the same day.
    store.check_against_recount(datetime(2026, 3, 9, 3, 59, tzinfo=UTC))
    assert (store.totals[Window.DAY].used, store.totals[Window.WEEK].used) == (7, 12)
    # Midnight of Monday the 9th: a new day and a new week; the same month.
    store.check_against_recount(datetime(2026, 3, 9, 4, 0, tzinfo=UTC))
    assert [store.totals[w].used for w in Window] == [0, 0, 12]
