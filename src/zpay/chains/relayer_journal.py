"""The relayer journal: which relayer transactions are out there, shared by every process.

API replicas and workers sign with ONE relayer key. Nonces counted per process collide,
and two processes submitting the same authorization would each pay a relayer tx for it
(one lands, the others revert). The journal is the relayer's log, written under a lock
that holds for the whole deployment:

    async with journal.slot(chain, relayer_address) as slot:
        ...  # allocate a nonce, sign, broadcast, then slot.record(tx)

While a slot is open nobody else (no task, no process) opens one for the same relayer:
the nonce is allocated, the transaction signed and broadcast, and the record written,
all under it. The records are committed when the block exits without an error; an error
discards them (so record only what the node took, or may have taken).

Implementations: `InMemoryRelayerJournal` here (an asyncio lock; for tests and a single
process), `zpay.store.relayer_journal.DbRelayerJournal` (a row lock on PostgreSQL,
BEGIN IMMEDIATE on SQLite) for deployments. Only the standard library here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "InMemoryRelayerJournal",
    "OutstandingTx",
    "RelayerJournal",
    "RelayerSlot",
]


@dataclass(frozen=True)
class OutstandingTx:
    """A relayer transaction the node took (or may have), not known to be mined. One per
    nonce: a replacement (higher fees, or a filler) takes its predecessor's place."""

    nonce: int
    tx_hash: str
    raw: bytes  # the signed bytes: enough to re-broadcast, or to re-sign the same call
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    authorization: str | None  # "<from>:0x<nonce>" of the EIP-3009 authorization it carries
    sent_at: datetime  # UTC, for "stuck for how long" only; never decides an outcome


class RelayerSlot(Protocol):
    """The journal of one relayer on one chain, held exclusively."""

    @property
    def next_nonce(self) -> int | None:
        """One past the highest nonce ever recorded; None if nothing ever was."""
        ...

    def outstanding(self) -> list[OutstandingTx]:
        """Every outstanding transaction, lowest nonce first."""
        ...

    def for_authorization(self, authorization: str) -> list[OutstandingTx]:
        """The outstanding transactions carrying `authorization`, lowest nonce first."""
        ...

    async def record(self, tx: OutstandingTx) -> None:
        """Add `tx` (replacing the one at its nonce, if any); `next_nonce` moves past it."""
        ...

    async def settle_below(self, nonce: int) -> None:
        """Forget the transactions below `nonce` (the relayer's mined count): their nonce is
        used, by them or by another transaction; the chain says which."""
        ...


class RelayerJournal(Protocol):
    def slot(self, chain: str, relayer_address: str) -> AbstractAsyncContextManager[RelayerSlot]:
        """Exclusive access to `relayer_address`'s journal on `chain`, for the whole
        deployment. Never open one inside another, nor inside an open database write
        transaction of the same process (SQLite has one writer)."""
        ...

    async def outstanding(
        self, chain: str, relayer_address: str, *, authorization: str | None = None
    ) -> list[OutstandingTx]:
        """A lock-free read of the outstanding transactions (of one authorization),
        lowest nonce first."""
        ...


# ------------------------------------------------------------------- in memory


@dataclass
class _Account:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_nonce: int | None = None
    txs: dict[int, OutstandingTx] = field(default_factory=dict)


class _MemorySlot:
    """Changes are staged and applied on a clean exit, like a database transaction."""

    def __init__(self, account: _Account) -> None:
        self._account = account
        self._next_nonce = account.next_nonce
        self._txs = dict(account.txs)

    @property
    def next_nonce(self) -> int | None:
        return self._next_nonce

    def outstanding(self) -> list[OutstandingTx]:
        return [self._txs[n] for n in sorted(self._txs)]

    def for_authorization(self, authorization: str) -> list[OutstandingTx]:
        return [tx for tx in self.outstanding() if tx.authorization == authorization]

    async def record(self, tx: OutstandingTx) -> None:
        self._txs[tx.nonce] = tx
        if self._next_nonce is None or tx.nonce >= self._next_nonce:
            self._next_nonce = tx.nonce + 1

    async def settle_below(self, nonce: int) -> None:
        for settled in [n for n in self._txs if n < nonce]:
            del self._txs[settled]

    def commit(self) -> None:
        self._account.next_nonce = self._next_nonce
        self._account.txs = self._txs


class InMemoryRelayerJournal:
    """A `RelayerJournal` for one process (and tests): an asyncio lock per relayer."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], _Account] = {}

    def _account(self, chain: str, relayer_address: str) -> _Account:
        return self._accounts.setdefault((chain, relayer_address.lower()), _Account())

    @contextlib.asynccontextmanager
    async def slot(self, chain: str, relayer_address: str) -> AsyncIterator[RelayerSlot]:
        account = self._account(chain, relayer_address)
        async with account.lock:
            slot = _MemorySlot(account)
            yield slot
            slot.commit()

    async def outstanding(
        self, chain: str, relayer_address: str, *, authorization: str | None = None
    ) -> list[OutstandingTx]:
        account = self._account(chain, relayer_address)
        return [
            account.txs[n]
            for n in sorted(account.txs)
            if authorization is None or account.txs[n].authorization == authorization
        ]
