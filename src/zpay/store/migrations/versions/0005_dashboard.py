"""dashboard: merchant dashboard users (email + scrypt hash) and server-side sign-in sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"],
            name=op.f("fk_dashboard_users_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_users")),
        sa.UniqueConstraint("email", name=op.f("uq_dashboard_users_email")),
    )
    with op.batch_alter_table("dashboard_users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_users_merchant_id"), ["merchant_id"],
                              unique=False)
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=True),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"],
            name=op.f("fk_dashboard_sessions_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"],
            name=op.f("fk_dashboard_sessions_merchant_id_merchants")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["dashboard_users.id"],
            name=op.f("fk_dashboard_sessions_user_id_dashboard_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_dashboard_sessions_token_hash")),
    )
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        for column in ("merchant_id", "api_key_id", "user_id", "expires_at"):
            batch_op.create_index(batch_op.f(f"ix_dashboard_sessions_{column}"), [column],
                                  unique=False)


def downgrade() -> None:
    op.drop_table("dashboard_sessions")
    op.drop_table("dashboard_users")
