"""Rate-limit counters shared by every replica: one row per (limit, subject, window)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base


class RateLimitCounter(Base):
    __tablename__ = "rate_limit_counters"
    # "<limit>:<sha256 of the subject, 32 hex>:<window number>": never a token or address
    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(index=True)  # end of the window
