"""Signing in to the merchant dashboard: a secret key or a dashboard user's email and password,
exchanged for a server-side session.

- The browser gets a random session token (cookie); the database keeps only its SHA-256
  hash, the merchant and who signed in. The secret key is checked once and never stored.
- Passwords are hashed with scrypt (a memory-hard KDF from the standard library), a random
  salt each, parameters stored with the hash so they can be raised later.
- The CSRF token of a session is an HMAC of its session token: bound to that session,
  unguessable without the cookie, and nothing more to store.
- A session ends at its expiry (`dashboard_session_ttl_s`), on sign-out, or when the secret
  key it was opened with is revoked or expires (rolled).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from zpay.domain import tokens
from zpay.domain.errors import Conflict, InvalidRequest, Unauthorized
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.services.session_tokens import csrf_digest, new_session_token
from zpay.store.dashboard_models import DashboardSession, DashboardUser
from zpay.store.ids import new_id
from zpay.store.models import ApiKey, Merchant

# scrypt at N=2^15, r=8, p=1: 32 MiB and ~0.1 s per hash (above OWASP's N=2^14 floor for
# interactive logins), so a stolen table costs an attacker dearly per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_KEY_LEN = 32
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
MAX_EMAIL_CHARS = 320
_CSRF_LABEL = b"zpay-dashboard-csrf-v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_LEN,
                            maxmem=_SCRYPT_MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                                p=int(p), dklen=_KEY_LEN, maxmem=_SCRYPT_MAXMEM)
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(digest))


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so an unknown email costs the same time."""
    return hash_password(secrets.token_urlsafe(16))


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > MAX_EMAIL_CHARS or any(
            c.isspace() for c in email):
        raise InvalidRequest("give a valid email address", code="invalid_email")
    return email


@dataclass(frozen=True)
class DashboardUserCreated:
    id: str
    merchant_id: str
    email: str


async def add_user(ctx: AppContext, merchant_id: str, email: str,
                   password: str) -> DashboardUserCreated:
    """A person who may sign in to `merchant_id`'s dashboard (operator command)."""
    email = normalize_email(email)
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidRequest(f"the password needs at least {MIN_PASSWORD_CHARS} characters",
                             code="weak_password")
    password_hash = hash_password(password)
    async with ctx.db.transaction() as s:
        if await s.get(Merchant, merchant_id) is None:
            raise InvalidRequest(f"no merchant {merchant_id!r}", code="merchant_not_found")
        taken = (await s.execute(select(DashboardUser.id).where(
            DashboardUser.email == email))).scalar()
        if taken is not None:
            raise Conflict("a dashboard user with this email exists",
                           code="dashboard_user_exists")
        user = DashboardUser(id=new_id("du"), merchant_id=merchant_id, email=email,
                             password_hash=password_hash, created_at=ctx.now())
        s.add(user)
    return DashboardUserCreated(user.id, merchant_id, email)


@dataclass(frozen=True)
class SignedIn:
    """What the browser gets once: the session token for its cookie."""

    token: str
    expires_at: datetime


@dataclass(frozen=True)
class DashboardIdentity:
    """A live dashboard session, resolved from its cookie."""

    session_id: str
    merchant_id: str
    merchant_name: str
    environment: str
    who: str  # "secret key sk_test_…abcd" or the user's email
    expires_at: datetime
    csrf_token: str

    @property
    def principal(self) -> Principal:
        return Principal(self.merchant_id, Role.MERCHANT)


def csrf_token_for(session_token: str) -> str:
    return _b64(csrf_digest(session_token, _CSRF_LABEL))


async def _open(ctx: AppContext, merchant_id: str, *, api_key_id: str | None = None,
                user_id: str | None = None) -> SignedIn:
    now = ctx.now()
    token = new_session_token()
    expires_at = now + timedelta(seconds=ctx.settings.dashboard_session_ttl_s)
    async with ctx.db.transaction() as s:
        # Sessions past their expiry are dead already; clearing them here bounds the table.
        await s.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
        s.add(DashboardSession(id=new_id("dss"), token_hash=tokens.token_hash(token),
                               merchant_id=merchant_id, api_key_id=api_key_id,
                               user_id=user_id, created_at=now, expires_at=expires_at))
    return SignedIn(token, expires_at)


_REFUSED = "that secret key was not recognised"


def _key_live(key: ApiKey, now: datetime) -> bool:
    """Neither revoked nor past the end of a roll's overlap: the API's rule."""
    return key.revoked_at is None and (key.expires_at is None or now < key.expires_at)


async def sign_in_with_key(ctx: AppContext, secret_key: str) -> SignedIn:
    secret_key = secret_key.strip()
    if tokens.parse_kind(secret_key) != "sk":  # agent tokens and garbage: no lookup
        raise Unauthorized(_REFUSED, code="invalid_credentials")
    async with ctx.db.sessions() as s:
        key = (await s.execute(select(ApiKey).where(
            ApiKey.token_hash == tokens.token_hash(secret_key)))).scalar()
    if key is None or not _key_live(key, ctx.now()):
        raise Unauthorized(_REFUSED, code="invalid_credentials")
    return await _open(ctx, key.merchant_id, api_key_id=key.id)


async def sign_in_with_password(ctx: AppContext, email: str, password: str) -> SignedIn:
    refused = Unauthorized("wrong email or password", code="invalid_credentials")
    try:
        email = normalize_email(email)
    except InvalidRequest:
        raise refused from None
    async with ctx.db.sessions() as s:
        user = (await s.execute(select(DashboardUser).where(
            DashboardUser.email == email))).scalar()
    ok = verify_password(password[:MAX_PASSWORD_CHARS],
                         user.password_hash if user is not None else _dummy_hash())
    if user is None or not ok:
        raise refused
    return await _open(ctx, user.merchant_id, user_id=user.id)


async def resolve(ctx: AppContext, session_token: str | None) -> DashboardIdentity | None:
    """The live session for this cookie value, or None (unknown, expired, key revoked)."""
    if not session_token or len(session_token) > 100:
        return None
    now = ctx.now()
    async with ctx.db.sessions() as s:
        row = (await s.execute(
            select(DashboardSession, Merchant)
            .join(Merchant, Merchant.id == DashboardSession.merchant_id)
            .where(DashboardSession.token_hash == tokens.token_hash(session_token))
        )).first()
        if row is None:
            return None
        session, merchant = row
        if now >= session.expires_at:
            return None
        if session.api_key_id is not None:
            key = await s.get(ApiKey, session.api_key_id)
            if key is None or not _key_live(key, now):
                return None
            who = f"secret key {key.hint}"
        else:
            user = await s.get(DashboardUser, session.user_id)
            if user is None:
                return None
            who = user.email
    return DashboardIdentity(session_id=session.id, merchant_id=merchant.id,
                             merchant_name=merchant.name, environment=merchant.environment,
                             who=who, expires_at=session.expires_at,
                             csrf_token=csrf_token_for(session_token))


async def sign_out(ctx: AppContext, session_token: str | None) -> None:
    if not session_token:
        return
    async with ctx.db.transaction() as s:
        await s.execute(delete(DashboardSession).where(
            DashboardSession.token_hash == tokens.token_hash(session_token)))
