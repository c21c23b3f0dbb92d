"""audit: what the continuous books-vs-chain audit last saw and reported per session wallet

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_findings",
        sa.Column("session_key_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("expected", zpay.store.types.SignedBaseUnits(), nullable=True),
        sa.Column("on_chain", zpay.store.types.BaseUnits(), nullable=True),
        sa.Column("difference", zpay.store.types.SignedBaseUnits(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("reported_difference", zpay.store.types.SignedBaseUnits(), nullable=True),
        sa.Column("reported_at", zpay.store.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("checked_at", zpay.store.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_audit_findings_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["session_key_id"],
            ["session_keys.id"],
            name=op.f("fk_audit_findings_session_key_id_session_keys"),
        ),
        sa.PrimaryKeyConstraint("session_key_id", name=op.f("pk_audit_findings")),
    )
    with op.batch_alter_table("audit_findings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_findings_merchant_id"), ["merchant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_audit_findings_checked_at"), ["checked_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_findings_checked_at"))
        batch_op.drop_index(batch_op.f("ix_audit_findings_merchant_id"))
    op.drop_table("audit_findings")
