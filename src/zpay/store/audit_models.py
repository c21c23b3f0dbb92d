"""The audit's memory: per session wallet, what was last seen and what was last reported.

One row per audited session key. `checked_at` is the job's round-robin cursor (oldest
first); `reported_difference` is the difference of the `audit.mismatch` still open (None:
none), so a difference is reported when it appears or changes, not on every run.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base
from zpay.store.types import BaseUnits, SignedBaseUnits


class AuditFinding(Base):
    __tablename__ = "audit_findings"
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    # consistent | in_flight | difference | unreadable; None: enrolled, not checked yet
    state: Mapped[str | None] = mapped_column(String(16))
    expected: Mapped[int | None] = mapped_column(SignedBaseUnits())  # funded - spent - refunded
    on_chain: Mapped[int | None] = mapped_column(BaseUnits())
    difference: Mapped[int | None] = mapped_column(SignedBaseUnits())  # on_chain - expected
    error_code: Mapped[str | None] = mapped_column(String(64))  # why it was unreadable
    reported_difference: Mapped[int | None] = mapped_column(SignedBaseUnits())
    reported_at: Mapped[datetime | None]
    checked_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime]
