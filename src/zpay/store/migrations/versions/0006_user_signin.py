"""user sign-in: nonces of SIWS / EIP-4361 messages, users' wallet sessions, keys by wallet

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signin_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("used_at", zpay.store.types.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_signin_nonces")),
    )
    with op.batch_alter_table("signin_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signin_nonces_expires_at"), ["expires_at"],
                              unique=False)
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=16), nullable=False),
        sa.Column("wallet", sa.String(length=100), nullable=False),
        sa.Column("created_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", zpay.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", zpay.store.types.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_sessions_token_hash")),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        for column in ("wallet", "expires_at"):
            batch_op.create_index(batch_op.f(f"ix_user_sessions_{column}"), [column],
                                  unique=False)
    # A signed-in user's keys are found by their wallet, across merchants.
    with op.batch_alter_table("session_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_keys_user_wallet"), ["user_wallet"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("session_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_keys_user_wallet"))
    op.drop_table("user_sessions")
    op.drop_table("signin_nonces")
