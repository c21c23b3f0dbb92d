"""The audit's judgement, pure: books before and after, the chain's balance in between."""

from __future__ import annotations

from zpay.domain.audit import AuditState, Books, InFlight, Report, judge, report_for

SETTLED = Books(funded=500, spent=91, held=0, refunded=0)  # expected 409


def test_settled_books_and_the_same_balance_are_consistent() -> None:
    verdict = judge(SETTLED, 409, SETTLED)
    assert (verdict.state, verdict.expected, verdict.difference) == (AuditState.CONSISTENT, 409, 0)
    assert verdict.in_flight == ()


def test_any_other_balance_with_settled_books_is_a_difference() -> None:
    more, less = judge(SETTLED, 609, SETTLED), judge(SETTLED, 200, SETTLED)
    assert (more.state, more.difference) == (AuditState.DIFFERENCE, 200)
    assert (less.state, less.difference) == (AuditState.DIFFERENCE, -209)


def test_a_held_payment_may_already_have_left_the_wallet() -> None:
    books = Books(funded=500, spent=91, held=30, refunded=0)
    for on_chain in (409, 395, 379):
        verdict = judge(books, on_chain, books)
        assert verdict.state is AuditState.IN_FLIGHT, on_chain
        assert verdict.in_flight == (InFlight.PAYMENTS,)
    assert judge(books, 378, books).state is AuditState.DIFFERENCE
    assert judge(books, 410, books).state is AuditState.DIFFERENCE


def test_an_approval_being_submitted_may_already_have_arrived() -> None:
    books = Books(funded=500, spent=0, held=0, refunded=0, approvals_in_flight=100)
    assert judge(books, 600, books).state is AuditState.IN_FLIGHT
    assert judge(books, 500, books).state is AuditState.IN_FLIGHT
    assert judge(books, 601, books).state is AuditState.DIFFERENCE
    assert judge(books, 499, books).state is AuditState.DIFFERENCE


def test_a_refund_in_progress_may_have_emptied_the_wallet() -> None:
    books = Books(funded=500, spent=100, held=0, refunded=0, refund_in_flight=True)
    assert judge(books, 0, books).state is AuditState.IN_FLIGHT
    assert judge(books, 400, books).state is AuditState.IN_FLIGHT
    assert judge(books, 401, books).state is AuditState.DIFFERENCE


def test_books_that_moved_while_the_chain_was_read_widen_the_band() -> None:
    # A payment of 25 authorized after the first read, captured before the second: the
    # chain may show it or not.
    before = SETTLED
    after = Books(funded=500, spent=116, held=0, refunded=0)
    for on_chain in (409, 384):
        verdict = judge(before, on_chain, after)
        assert verdict.state is not AuditState.DIFFERENCE, on_chain
    assert judge(before, 384, after).state is AuditState.CONSISTENT
    moved = judge(before, 409, after)
    assert (moved.state, moved.in_flight) == (AuditState.IN_FLIGHT, (InFlight.BOOKS_MOVED,))
    assert judge(before, 383, after).state is AuditState.DIFFERENCE


def test_a_difference_is_reported_when_it_appears_or_changes_then_resolved() -> None:
    assert report_for(judge(SETTLED, 409, SETTLED), None) is None
    first = judge(SETTLED, 609, SETTLED)
    assert report_for(first, None) is Report.MISMATCH
    assert report_for(first, 200) is None  # the same difference: reported already
    assert report_for(judge(SETTLED, 709, SETTLED), 200) is Report.MISMATCH  # it changed
    assert report_for(judge(SETTLED, 409, SETTLED), 200) is Report.RESOLVED


def test_in_flight_neither_repeats_nor_resolves_an_open_difference() -> None:
    # 200 too many on chain, reported; now a payment of 30 is in flight and has left.
    books = Books(funded=500, spent=91, held=30, refunded=0)
    verdict = judge(books, 579, books)
    assert (verdict.state, verdict.difference) == (AuditState.DIFFERENCE, 170)
    assert report_for(verdict, 200) is None  # what is in flight explains 200 → 170
    assert report_for(verdict, None) is Report.MISMATCH
    within = judge(books, 400, books)  # inside the band, but not settled
    assert within.state is AuditState.IN_FLIGHT
    assert report_for(within, 200) is None
