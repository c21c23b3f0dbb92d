"""keys and limits: named merchant keys with an expiry (rolling), agent token expiry,
rate-limit counters shared by replicas

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 13:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("expires_at", zpay.store.types.UtcDateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_expires_at",
                                      zpay.store.types.UtcDateTime(timezone=True), nullable=True))
    op.create_table(
        "rate_limit_counters",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_counters")),
    )
    with op.batch_alter_table("rate_limit_counters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rate_limit_counters_expires_at"), ["expires_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rate_limit_counters_expires_at"))
    op.drop_table("rate_limit_counters")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("token_expires_at")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("name")
