"""When to try a failed webhook delivery again.

Attempt 1 runs as soon as the event is written. After attempt *n* fails, the
next one waits ``RETRY_DELAYS[n - 1]`` (times the jitter below):

=======  ==========  ==================================
attempt  delay       elapsed since attempt 1 (no jitter)
=======  ==========  ==================================
1        —           0
2        5 s         5 s
3        5 min       5 min 5 s
4        30 min      35 min 5 s
5        2 h         2 h 35 min 5 s
6        5 h         7 h 35 min 5 s
7        10 h        17 h 35 min 5 s
8        14 h        31 h 35 min 5 s
9        20 h        51 h 35 min 5 s
10       20 h        71 h 35 min 5 s  (≈ 3 days)
=======  ==========  ==================================

The short early steps absorb a deploy or a blip; the long tail rides out a
weekend outage. After attempt 10 (:data:`MAX_ATTEMPTS`) fails,
:func:`next_attempt_at` returns ``None``: the delivery is given up and the
endpoint may be disabled.

Each delay is multiplied by a factor drawn uniformly from [0.9, 1.1], so
deliveries that failed together (an endpoint outage) do not all return in the
same second. The factor comes from a caller-supplied ``random.Random`` so
tests can seed it. With jitter the total stays within ±10 % of 71.6 hours.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Final

RETRY_DELAYS: Final[tuple[timedelta, ...]] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=20),
)
MAX_ATTEMPTS: Final = len(RETRY_DELAYS) + 1
JITTER_FRACTION: Final = 0.1


def retry_delay(attempt_number: int, rng: random.Random) -> timedelta | None:
    """The jittered wait after attempt ``attempt_number`` (1-based) failed; None = give up."""
    if attempt_number < 1:
        raise ValueError("attempt_number starts at 1")
    if attempt_number >= MAX_ATTEMPTS:
        return None
    factor = rng.uniform(1 - JITTER_FRACTION, 1 + JITTER_FRACTION)
    return RETRY_DELAYS[attempt_number - 1] * factor


def next_attempt_at(attempt_number: int, now: datetime, rng: random.Random) -> datetime | None:
    """When to run the attempt after ``attempt_number`` failed at ``now``; None = give up."""
    delay = retry_delay(attempt_number, rng)
    return None if delay is None else now + delay
