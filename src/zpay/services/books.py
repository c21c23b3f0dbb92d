"""The bridge between a session key's row and its domain ledger. Services change a key's
balances only through `book` (an ORM object, flushed by its unit of work) or `write` (one
UPDATE statement, for the payment hot path), with a `KeyLedger` operation that checked the
invariants — and the row's CHECK constraint checks them again."""

from __future__ import annotations

from typing import Any

from zpay.domain.ledger import KeyLedger
from zpay.services.rows import update_row
from zpay.store.direct import Executor
from zpay.store.models import SessionKey


def ledger_of(key: SessionKey) -> KeyLedger:
    return KeyLedger(funded=key.funded_amount, spent=key.spent_amount, held=key.held_amount,
                     refunded=key.refunded_amount)


def book(key: SessionKey, ledger: KeyLedger) -> None:
    key.funded_amount, key.spent_amount = ledger.funded, ledger.spent
    key.held_amount, key.refunded_amount = ledger.held, ledger.refunded


async def write(s: Executor, key: SessionKey, ledger: KeyLedger, **columns: Any) -> None:
    """Book `ledger` (and any other `columns`) on a key read under its row lock, in one
    UPDATE; `key` (a transient copy of the row) is kept in step for the answer."""
    book(key, ledger)
    for name, value in columns.items():
        setattr(key, name, value)
    await update_row(s, SessionKey, key.id, dict(
        funded_amount=ledger.funded, spent_amount=ledger.spent, held_amount=ledger.held,
        refunded_amount=ledger.refunded, **columns))
