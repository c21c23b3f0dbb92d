"""x402: the x402 side of payments made to x402-protected resources

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "x402_payments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("session_key_id", sa.String(length=40), nullable=False),
        sa.Column("x402_version", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(length=100), nullable=False),
        sa.Column("asset", sa.String(length=100), nullable=False),
        sa.Column("pay_to", sa.String(length=100), nullable=False),
        sa.Column("resource_url", sa.String(length=2000), nullable=True),
        sa.Column("requirement", sa.JSON(), nullable=False),
        sa.Column("header_name", sa.String(length=40), nullable=False),
        sa.Column("header_value", sa.Text(), nullable=False),
        sa.Column("reported_tx", sa.String(length=200), nullable=True),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["payments.id"], name=op.f("fk_x402_payments_id_payments")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_x402_payments_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["session_key_id"],
            ["session_keys.id"],
            name=op.f("fk_x402_payments_session_key_id_session_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_x402_payments")),
    )
    with op.batch_alter_table("x402_payments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_x402_payments_merchant_id"), ["merchant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_x402_payments_session_key_id"), ["session_key_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("x402_payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_x402_payments_session_key_id"))
        batch_op.drop_index(batch_op.f("ix_x402_payments_merchant_id"))
    op.drop_table("x402_payments")
