"""`RelayerJournal` in the database: one relayer key shared by every API replica and worker.

A slot is one write transaction holding the relayer's `relayer_accounts` row: `SELECT …
FOR UPDATE` on PostgreSQL; on SQLite the transaction's BEGIN IMMEDIATE already makes it
the only writer (of every process on the file). The nonce is allocated, the transaction
signed and broadcast, and the record written under it; the commit publishes the record.

A crash after a broadcast and before the commit leaves a transaction the journal does
not know: its nonce is still skipped (the relayer also takes the node's pending count),
and the authorization it carries is still settled once (the token refuses a second use);
at worst a duplicate relayer transaction reverts and costs gas.

Do not open a slot inside an open write transaction of the same process: on SQLite
that waits for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.relayer_journal import OutstandingTx, RelayerSlot
from zpay.store.database import Database
from zpay.store.relayer_models import RelayerAccount, RelayerTx


def _outstanding(row: RelayerTx) -> OutstandingTx:
    return OutstandingTx(
        nonce=row.nonce,
        tx_hash=row.tx_hash,
        raw=row.raw,
        max_fee_per_gas=row.max_fee_per_gas,
        max_priority_fee_per_gas=row.max_priority_fee_per_gas,
        authorization=row.authorization,
        sent_at=row.sent_at,
    )


class _DbSlot:
    def __init__(
        self, session: AsyncSession, account: RelayerAccount, txs: list[OutstandingTx]
    ) -> None:
        self._session = session
        self._account = account
        self._txs = {tx.nonce: tx for tx in txs}

    @property
    def next_nonce(self) -> int | None:
        return self._account.next_nonce

    def outstanding(self) -> list[OutstandingTx]:
        return [self._txs[n] for n in sorted(self._txs)]

    def for_authorization(self, authorization: str) -> list[OutstandingTx]:
        return [tx for tx in self.outstanding() if tx.authorization == authorization]

    async def record(self, tx: OutstandingTx) -> None:
        key = (self._account.chain, self._account.address, tx.nonce)
        # The slot loaded every row of this relayer: a nonce it does not hold has none
        # (no read needed), one it holds is in the session already.
        row = await self._session.get(RelayerTx, key) if tx.nonce in self._txs else None
        if row is None:
            row = RelayerTx(chain=key[0], address=key[1], nonce=tx.nonce)
            self._session.add(row)
        row.tx_hash, row.raw, row.authorization, row.sent_at = (
            tx.tx_hash,
            tx.raw,
            tx.authorization,
            tx.sent_at,
        )
        row.max_fee_per_gas = tx.max_fee_per_gas
        row.max_priority_fee_per_gas = tx.max_priority_fee_per_gas
        self._txs[tx.nonce] = tx
        if self._account.next_nonce is None or tx.nonce >= self._account.next_nonce:
            self._account.next_nonce = tx.nonce + 1
        self._account.updated_at = datetime.now(UTC)

    async def settle_below(self, nonce: int) -> None:
        settled = [n for n in self._txs if n < nonce]
        if not settled:
            return
        await self._session.execute(
            delete(RelayerTx).where(
                RelayerTx.chain == self._account.chain,
                RelayerTx.address == self._account.address,
                RelayerTx.nonce < nonce,
            )
        )
        for n in settled:
            del self._txs[n]


class DbRelayerJournal:
    """A `RelayerJournal` in zpay's database (PostgreSQL or SQLite)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Tasks of this process queue here first, so at most one of them holds a pooled
        # connection while waiting for the row lock.
        self._local: dict[tuple[str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def slot(self, chain: str, relayer_address: str) -> AsyncIterator[RelayerSlot]:
        address = relayer_address.lower()
        local = self._local.setdefault((chain, address), asyncio.Lock())
        async with local, self._db.transaction() as s:
            account = await self._lock(s, chain, address)
            rows = (
                await s.execute(
                    select(RelayerTx)
                    .where(RelayerTx.chain == chain, RelayerTx.address == address)
                    .order_by(RelayerTx.nonce)
                )
            ).scalars()
            yield _DbSlot(s, account, [_outstanding(r) for r in rows])

    async def _lock(self, s: AsyncSession, chain: str, address: str) -> RelayerAccount:
        values = {
            "chain": chain,
            "address": address,
            "next_nonce": None,
            "updated_at": datetime.now(UTC),
        }
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        await s.execute(insert(RelayerAccount).values(**values).on_conflict_do_nothing())
        return (
            await s.execute(
                select(RelayerAccount)
                .where(RelayerAccount.chain == chain, RelayerAccount.address == address)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()

    async def outstanding(
        self, chain: str, relayer_address: str, *, authorization: str | None = None
    ) -> list[OutstandingTx]:
        stmt = select(RelayerTx).where(
            RelayerTx.chain == chain, RelayerTx.address == relayer_address.lower()
        )
        if authorization is not None:
            stmt = stmt.where(RelayerTx.authorization == authorization)
        async with self._db.sessions() as s:
            rows = (await s.execute(stmt.order_by(RelayerTx.nonce))).scalars()
            return [_outstanding(r) for r in rows]
