import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from zpay.webhooks.retry import MAX_ATTEMPTS, RETRY_DELAYS, next_attempt_at, retry_delay

START = datetime(2025, 1, 1, tzinfo=UTC)


def schedule(seed: int) -> list[datetime]:
    rng = random.Random(seed)
    times = [START]
    attempt = 1
    while (following := next_attempt_at(attempt, times[-1], rng)) is not None:
        times.append(following)
        attempt += 1
    return times


def test_gives_up_after_max_attempts() -> None:
    assert len(schedule(1)) == MAX_ATTEMPTS
    assert next_attempt_at(MAX_ATTEMPTS, START, random.Random(1)) is None
    assert next_attempt_at(MAX_ATTEMPTS + 5, START, random.Random(1)) is None


@pytest.mark.parametrize("seed", range(50))
def test_monotonic_bounded_and_about_three_days(seed: int) -> None:
    times = schedule(seed)
    assert all(a < b for a, b in itertools.pairwise(times))
    total = times[-1] - START
    assert timedelta(days=2.6) <= total <= timedelta(days=3.3)
    for attempt, (a, b) in enumerate(itertools.pairwise(times), start=1):
        base = RETRY_DELAYS[attempt - 1]
        assert base * 0.9 <= b - a <= base * 1.1


def test_delays_grow_and_start_small() -> None:
    assert RETRY_DELAYS[0] == timedelta(seconds=5)
    assert list(RETRY_DELAYS) == sorted(RETRY_DELAYS)
    assert timedelta(days=2.9) <= sum(RETRY_DELAYS, timedelta()) <= timedelta(days=3.1)


def test_deterministic_under_a_seeded_rng() -> None:
    assert schedule(42) == schedule(42)
    assert schedule(42) != schedule(43)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, random.Random(1))
