"""books == chain: durable chain transfers, ledger CHECK, idempotency bound to the hold,
approvals share a funding id across renewals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_transfers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("session_key_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("amount", zpay.store.types.BaseUnits(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_id", sa.String(length=200), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_chain_transfers_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["session_key_id"],
            ["session_keys.id"],
            name=op.f("fk_chain_transfers_session_key_id_session_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_transfers")),
        sa.UniqueConstraint("reference", name=op.f("uq_chain_transfers_reference")),
    )
    with op.batch_alter_table("chain_transfers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_chain_transfers_session_key_id"), ["session_key_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_chain_transfers_subject_id"), ["subject_id"], unique=False
        )
        batch_op.create_index(
            "ix_chain_transfers_status_updated", ["status", "updated_at"], unique=False
        )

    # Payments submitted before this version: their recorded transfers become rows.
    op.execute(
        "INSERT INTO chain_transfers (id, merchant_id, session_key_id, kind, subject_id, chain, "
        "reference, payload, amount, valid_until, status, tx_id, failure_code, created_at, "
        "updated_at) SELECT 'xfer_' || id, merchant_id, session_key_id, 'payment', id, chain, "
        "tx_reference, tx_payload, amount, NULL, CASE status WHEN 'succeeded' THEN 'confirmed' "
        "WHEN 'failed' THEN 'failed' ELSE 'pending' END, tx_id, failure_code, created_at, "
        "updated_at FROM payments WHERE tx_reference IS NOT NULL AND tx_payload IS NOT NULL"
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("tx_payload")

    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("funding_id", sa.String(length=40), nullable=True))
    op.execute("UPDATE approvals SET funding_id = id")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.alter_column("funding_id", existing_type=sa.String(length=40), nullable=False)

    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payment_id", sa.String(length=40), nullable=True))
    # Claims of requests that died before this version never learn their outcome; drop them
    # so a retry runs afresh (a payment they made is found by reconciliation either way).
    op.execute("DELETE FROM idempotency_records WHERE status = 'in_flight'")

    with op.batch_alter_table("session_keys", schema=None) as batch_op:
        batch_op.create_check_constraint(
            "ledger_balanced",
            "spent_amount + held_amount + refunded_amount <= funded_amount + 0",
        )


def downgrade() -> None:
    with op.batch_alter_table("session_keys", schema=None) as batch_op:
        batch_op.drop_constraint("ledger_balanced", type_="check")
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_column("payment_id")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("funding_id")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tx_payload", sa.LargeBinary(), nullable=True))
    op.drop_table("chain_transfers")
