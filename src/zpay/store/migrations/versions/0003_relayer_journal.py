"""relayer journal: the relayer's nonces and outstanding transactions, shared by every
process that holds the relayer key

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relayer_accounts",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain", "address", name=op.f("pk_relayer_accounts")),
    )
    op.create_table(
        "relayer_txs",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("max_fee_per_gas", zpay.store.types.BaseUnits(), nullable=False),
        sa.Column("max_priority_fee_per_gas", zpay.store.types.BaseUnits(), nullable=False),
        sa.Column("authorization", sa.String(length=120), nullable=True),
        sa.Column("sent_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["chain", "address"],
            ["relayer_accounts.chain", "relayer_accounts.address"],
            name="fk_relayer_txs_account",
        ),
        sa.PrimaryKeyConstraint("chain", "address", "nonce", name=op.f("pk_relayer_txs")),
    )
    with op.batch_alter_table("relayer_txs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_relayer_txs_authorization", ["chain", "address", "authorization"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("relayer_txs", schema=None) as batch_op:
        batch_op.drop_index("ix_relayer_txs_authorization")
    op.drop_table("relayer_txs")
    op.drop_table("relayer_accounts")
