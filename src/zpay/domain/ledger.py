"""The ledger of one session key: the only place a key's balances change.

Every movement of money through a session wallet is one of these, and each is checked:

- fund(a)          an approval (funding or top-up) landed on chain: funded += a
- hold(a)          a payment was authorized: held += a (must fit in what remains)
- capture(a)       its transfer landed: held -= a, spent += a
- release(a)       its transfer provably can never land: held -= a
- late_capture(a)  a transfer that was released landed after all: spent += a
- refund(a)        a sweep back to the user landed: refunded += a

Invariants after every change: all four figures are non-negative and
spent + held + refunded <= funded. The schema carries the same rule as CHECK constraints,
so even a change that bypassed this class could not be committed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zpay.domain.errors import ZpayError


class LedgerViolation(ZpayError):
    """A change would break the books' invariants; nothing is written."""

    code = "ledger_violation"


@dataclass(frozen=True)
class KeyLedger:
    funded: int = 0
    spent: int = 0
    held: int = 0
    refunded: int = 0

    def __post_init__(self) -> None:
        for name in ("funded", "spent", "held", "refunded"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LedgerViolation(f"{name} must be a non-negative integer, got {value!r}")
        if self.spent + self.held + self.refunded > self.funded:
            raise LedgerViolation(
                f"spent {self.spent} + held {self.held} + refunded {self.refunded} exceed "
                f"funded {self.funded}"
            )

    @property
    def remaining(self) -> int:
        """What can still be held for a payment: funded - spent - held - refunded."""
        return self.funded - self.spent - self.held - self.refunded

    @property
    def in_wallet(self) -> int:
        """What the session wallet holds by the books once every hold is settled the
        other way round: funded - spent - refunded (holds have not left it yet)."""
        return self.funded - self.spent - self.refunded

    def fund(self, amount: int) -> KeyLedger:
        _positive(amount)
        return replace(self, funded=self.funded + amount)

    def hold(self, amount: int) -> KeyLedger:
        _positive(amount)
        if amount > self.remaining:
            raise LedgerViolation(f"cannot hold {amount}: only {self.remaining} remains")
        return replace(self, held=self.held + amount)

    def capture(self, amount: int) -> KeyLedger:
        _positive(amount)
        self._require_held(amount)
        return replace(self, held=self.held - amount, spent=self.spent + amount)

    def release(self, amount: int) -> KeyLedger:
        _positive(amount)
        self._require_held(amount)
        return replace(self, held=self.held - amount)

    def late_capture(self, amount: int) -> KeyLedger:
        _positive(amount)
        return replace(self, spent=self.spent + amount)

    def refund(self, amount: int) -> KeyLedger:
        _positive(amount)
        return replace(self, refunded=self.refunded + amount)

    def _require_held(self, amount: int) -> None:
        if amount > self.held:
            raise LedgerViolation(f"cannot settle {amount}: only {self.held} is held")


def _positive(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise LedgerViolation(f"a ledger amount must be a positive integer, got {amount!r}")
