"""The key ledger: every balance change, and the invariants it keeps."""

from __future__ import annotations

import ast
import pathlib

import pytest

import zpay
from zpay.domain.ledger import KeyLedger, LedgerViolation


def test_a_payment_lifecycle_and_a_refund() -> None:
    ledger = KeyLedger().fund(100).hold(30).capture(30).hold(20).release(20)
    assert (ledger.funded, ledger.spent, ledger.held, ledger.refunded) == (100, 30, 0, 0)
    assert ledger.remaining == 70
    ledger = ledger.refund(70)
    assert ledger.remaining == 0 and ledger.in_wallet == 0


def test_holds_never_exceed_what_remains() -> None:
    ledger = KeyLedger().fund(10).hold(7)
    with pytest.raises(LedgerViolation):
        ledger.hold(4)
    assert ledger.hold(3).remaining == 0


@pytest.mark.parametrize("change", [
    lambda ledger: ledger.capture(6),  # more than held
    lambda ledger: ledger.release(6),
    lambda ledger: ledger.refund(6),  # 5 held + 6 > 10
    lambda ledger: ledger.hold(0),
    lambda ledger: ledger.fund(-1),
])
def test_impossible_changes_are_refused(change: object) -> None:
    ledger = KeyLedger().fund(10).hold(5)
    with pytest.raises(LedgerViolation):
        change(ledger)  # type: ignore[operator]


def test_a_late_capture_books_a_released_transfer_that_landed() -> None:
    ledger = KeyLedger().fund(10).hold(4).release(4).late_capture(4)
    assert (ledger.spent, ledger.held, ledger.remaining) == (4, 0, 6)


def test_services_change_balances_only_through_the_ledger() -> None:
    """No `key.held_amount += …`: every balance column is written by `books.book`."""
    root = pathlib.Path(zpay.__file__).parent
    columns = {"funded_amount", "spent_amount", "held_amount", "refunded_amount"}
    offenders = []
    for path in [*root.joinpath("services").rglob("*.py"), *root.joinpath("jobs").rglob("*.py")]:
        if path.name == "books.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AugAssign) else [])
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Attribute) and leaf.attr in columns:
                        offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
