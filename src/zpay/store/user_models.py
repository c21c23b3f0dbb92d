"""A user's sign-in with their wallet: the nonces zpay issued and the sessions they opened.

`signin_nonces`: one row per nonce handed out for a SIWS / EIP-4361 message; `used_at` is
set by the single UPDATE that consumes it, so a nonce signs in at most once.
`user_sessions`: the browser holds a random token (HttpOnly cookie); the row keeps its
SHA-256 hash and the wallet it proves. Users are not merchants: these rows belong to no
merchant, and what they reach is decided by `wallet` alone (keys whose `user_wallet` it is).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base


class SignInNonce(Base):
    __tablename__ = "signin_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class UserSession(Base):
    __tablename__ = "user_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(16))  # solana | evm
    wallet: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]  # signed out
