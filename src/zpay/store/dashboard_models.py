"""The merchant dashboard's sign-ins: its users (email + scrypt hash) and server-side sessions.

A browser holds only a random session token in an HttpOnly cookie; the database keeps its
SHA-256 hash, the merchant it opens and how it was opened (a secret key or a user), never
the secret key itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base


class DashboardUser(Base):
    __tablename__ = "dashboard_users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased
    password_hash: Mapped[str] = mapped_column(String(200))  # scrypt$n$r$p$salt$hash
    created_at: Mapped[datetime]


class DashboardSession(Base):
    __tablename__ = "dashboard_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    # Exactly one of these says who signed in; revoking the key ends its sessions too.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("dashboard_users.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
