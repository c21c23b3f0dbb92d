"""The bridge between a session key's row and its domain ledger. Services change a key's
balances only through `book`, with a `KeyLedger` operation that checked the invariants."""

from __future__ import annotations

from zpay.domain.ledger import KeyLedger
from zpay.store.models import SessionKey


def ledger_of(key: SessionKey) -> KeyLedger:
    return KeyLedger(funded=key.funded_amount, spent=key.spent_amount, held=key.held_amount,
                     refunded=key.refunded_amount)


def book(key: SessionKey, ledger: KeyLedger) -> None:
    key.funded_amount, key.spent_amount = ledger.funded, ledger.spent
    key.held_amount, key.refunded_amount = ledger.held, ledger.refunded
