"""Books against the chain, per session wallet: the pure judgement (DESIGN.md, "Truth").

A session wallet holds exactly what its books say is left:

    expected = funded - spent - refunded

Nothing else moves its balance: zpay pays every fee (a Solana fee payer, an EVM relayer
submitting EIP-3009 authorizations), so a session wallet never pays gas, and only the
funding approvals, the payments and the refund sweep touch it.

What is in flight makes a band, not a point, because the chain may be ahead of the books:

- a payment still `authorized`/`submitted` (the key's `held` amount) may already have
  left the wallet: the chain may be as low as `expected - held`;
- a funding or top-up approval in status `submitting` may already have arrived: the
  chain may be as high as `expected + its amount`;
- a refund sweep in progress (`sweeping`/`retrying`) moves the whole balance: the chain
  may be as low as 0.

The books are read twice, before and after the chain: whatever changed in between (a
payment captured, an approval confirmed) is in one of the two snapshots, so the band is
their union. Inside it the wallet is consistent; outside it is a difference.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AuditState(enum.StrEnum):
    CONSISTENT = "consistent"  # settled books, and the chain says exactly the same
    IN_FLIGHT = "in_flight"  # within the band that what is in flight allows
    DIFFERENCE = "difference"  # outside it: books and chain disagree
    UNREADABLE = "unreadable"  # the chain could not be asked: neither OK nor a difference


class InFlight(enum.StrEnum):
    PAYMENTS = "payments"
    APPROVALS = "approvals"
    REFUND = "refund"
    BOOKS_MOVED = "books_moved"  # the books changed while the chain was read


@dataclass(frozen=True)
class Books:
    """One session key's books at one instant, in base units."""

    funded: int
    spent: int
    held: int  # payments authorized or submitted
    refunded: int
    approvals_in_flight: int = 0  # approvals in status `submitting`
    refund_in_flight: bool = False  # refund_status `sweeping` or `retrying`

    @property
    def expected(self) -> int:
        return self.funded - self.spent - self.refunded

    @property
    def lowest(self) -> int:
        """The least the wallet may hold if everything in flight already left it."""
        low = self.expected - self.held
        return min(low, 0) if self.refund_in_flight else low

    @property
    def highest(self) -> int:
        """The most the wallet may hold if every approval in flight already arrived."""
        return self.expected + self.approvals_in_flight

    @property
    def in_flight(self) -> tuple[InFlight, ...]:
        reasons = []
        if self.held:
            reasons.append(InFlight.PAYMENTS)
        if self.approvals_in_flight:
            reasons.append(InFlight.APPROVALS)
        if self.refund_in_flight:
            reasons.append(InFlight.REFUND)
        return tuple(reasons)


@dataclass(frozen=True)
class Verdict:
    state: AuditState
    expected: int  # of the later snapshot
    on_chain: int
    lowest: int  # the band over both snapshots
    highest: int
    in_flight: tuple[InFlight, ...]

    @property
    def difference(self) -> int:
        return self.on_chain - self.expected

    def explains(self, difference: int) -> bool:
        """Whether `difference` (on chain - expected) is one that what is in flight could
        have turned into this one: the same discrepancy, seen at another moment."""
        return self.on_chain - self.highest <= difference <= self.on_chain - self.lowest


def judge(before: Books, on_chain: int, after: Books) -> Verdict:
    """The chain's balance, read between the two snapshots of the books."""
    lowest = min(before.lowest, after.lowest)
    highest = max(before.highest, after.highest)
    reasons = list(dict.fromkeys((*before.in_flight, *after.in_flight)))
    if before != after:
        reasons.append(InFlight.BOOKS_MOVED)
    if not lowest <= on_chain <= highest:
        state = AuditState.DIFFERENCE
    elif on_chain == after.expected and not after.in_flight:
        state = AuditState.CONSISTENT  # the chain agrees with settled books
    else:
        state = AuditState.IN_FLIGHT
    return Verdict(state, after.expected, on_chain, lowest, highest, tuple(reasons))


class Report(enum.StrEnum):
    MISMATCH = "audit.mismatch"
    RESOLVED = "audit.resolved"


def report_for(verdict: Verdict, reported: int | None) -> Report | None:
    """The event a verdict calls for, given the difference last reported (None: none open).

    A difference is reported when it appears or changes, not again on every run while it
    stays the same (or while what is in flight could explain the change). It is resolved
    only when the chain agrees exactly with settled books: a wallet merely within its
    in-flight band keeps its open report, so the event does not flap while payments move.
    """
    if verdict.state is AuditState.DIFFERENCE:
        if reported is None or not verdict.explains(reported):
            return Report.MISMATCH
        return None
    if verdict.state is AuditState.CONSISTENT and reported is not None:
        return Report.RESOLVED
    return None
