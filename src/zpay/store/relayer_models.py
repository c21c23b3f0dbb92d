"""The relayer journal's tables (see `zpay.chains.relayer_journal`, `relayer_journal`).

`relayer_accounts`: one row per (chain, relayer address), locked for the whole
deployment while a relayer nonce is allocated, signed and broadcast; it keeps the next
nonce. `relayer_txs`: the relayer transactions the node took (or may have) and that are
not known to be mined — raw bytes included, so any process can re-broadcast or replace
them — one per nonce.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKeyConstraint, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base
from zpay.store.types import BaseUnits


class RelayerAccount(Base):
    __tablename__ = "relayer_accounts"
    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)  # lower case
    next_nonce: Mapped[int | None] = mapped_column(BigInteger)  # None: never sent
    updated_at: Mapped[datetime]


class RelayerTx(Base):
    __tablename__ = "relayer_txs"
    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    nonce: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tx_hash: Mapped[str] = mapped_column(String(66))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    max_fee_per_gas: Mapped[int] = mapped_column(BaseUnits())
    max_priority_fee_per_gas: Mapped[int] = mapped_column(BaseUnits())
    # "<from>:0x<nonce>" of the EIP-3009 authorization carried; None for fillers, faucet…
    authorization: Mapped[str | None] = mapped_column(String(120))
    sent_at: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["chain", "address"],
            ["relayer_accounts.chain", "relayer_accounts.address"],
            name="fk_relayer_txs_account",
        ),
        Index("ix_relayer_txs_authorization", "chain", "address", "authorization"),
    )
