"""What the dashboard's and the user pages' server-side sessions share.

The browser holds a random token (its cookie); the database keeps only its SHA-256
(`zpay.domain.tokens.token_hash`). A session's CSRF token is an HMAC of that token under a
label naming the page family: bound to the session, unguessable without the cookie, and
nothing more to store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_digest(session_token: str, label: bytes) -> bytes:
    return hmac.new(session_token.encode(), label, hashlib.sha256).digest()


def same_secret(expected: str | None, submitted: str | None) -> bool:
    """Both given and equal, compared in constant time."""
    return bool(expected and submitted) and hmac.compare_digest(
        (expected or "").encode(), (submitted or "").encode())
