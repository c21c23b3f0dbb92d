"""idempotency records scoped per principal; policy windows kept as running totals

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:00:00

- `idempotency_records.principal` (an agent, a session token or the merchant itself): the
  unique key becomes (merchant, principal, key). Existing records made by an agent's
  payment are that agent's; the rest the merchant's (they expire within a day anyway).
- `policy_sessions.{day,week,month}_{since,used}`: each window's running total. Carried
  over exactly: `since` at the epoch and `used` the sum of every counted payment of the
  session, so the first authorization after the upgrade subtracts what has left each
  window (each payment leaves once) and the totals are exact from the start.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import zpay.store.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WINDOWS = ("day", "week", "month")
COUNTED = ("authorized", "submitted", "succeeded")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def upgrade() -> None:
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal", sa.String(length=64), nullable=False,
                                      server_default="merchant"))
        batch_op.drop_constraint("uq_idempotency_merchant_key", type_="unique")
        batch_op.create_unique_constraint("uq_idempotency_principal_key",
                                          ["merchant_id", "principal", "key"])
    op.execute(
        "UPDATE idempotency_records SET principal = 'agent:' || "
        "(SELECT p.agent_id FROM payments p WHERE p.id = idempotency_records.payment_id) "
        "WHERE payment_id IN (SELECT id FROM payments WHERE agent_id IS NOT NULL)")

    for window in WINDOWS:
        op.add_column("policy_sessions", sa.Column(
            f"{window}_since", zpay.store.types.UtcDateTime(timezone=True), nullable=False,
            server_default=sa.text("'1970-01-01 00:00:00'")))
        op.add_column("policy_sessions", sa.Column(
            f"{window}_used", zpay.store.types.BaseUnits(precision=78, scale=0),
            nullable=False, server_default="0"))
    bind = op.get_bind()
    payments = sa.table("payments", sa.column("policy_session_id", sa.String()),
                        sa.column("amount", zpay.store.types.BaseUnits()),
                        sa.column("status", sa.String()))
    sessions = sa.table("policy_sessions", sa.column("id", sa.String()),
                        *(sa.column(f"{w}_since", zpay.store.types.UtcDateTime())
                          for w in WINDOWS),
                        *(sa.column(f"{w}_used", zpay.store.types.BaseUnits())
                          for w in WINDOWS))
    totals: dict[str, int] = {}
    for policy_id, amount in bind.execute(sa.select(
            payments.c.policy_session_id, payments.c.amount).where(
            payments.c.policy_session_id.is_not(None), payments.c.status.in_(COUNTED))):
        totals[policy_id] = totals.get(policy_id, 0) + int(amount)
    for policy_id in bind.execute(sa.select(sessions.c.id)).scalars().all():
        used = totals.get(policy_id, 0)
        bind.execute(sessions.update().where(sessions.c.id == policy_id).values(
            **{f"{w}_since": EPOCH for w in WINDOWS}, **{f"{w}_used": used for w in WINDOWS}))


def downgrade() -> None:
    for window in WINDOWS:
        with op.batch_alter_table("policy_sessions", schema=None) as batch_op:
            batch_op.drop_column(f"{window}_used")
            batch_op.drop_column(f"{window}_since")
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_idempotency_principal_key", type_="unique")
        batch_op.create_unique_constraint("uq_idempotency_merchant_key", ["merchant_id", "key"])
        batch_op.drop_column("principal")
