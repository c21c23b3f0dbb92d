"""A merchant's secret API keys: create more, list (hint only), revoke, roll with an overlap.

A key is shown once, stored as a SHA-256 hash. Revoking takes effect on the next call.
Rolling creates a new key with the same name and gives the old one an `expires_at`
(`overlap_seconds` from now, at most `MAX_OVERLAP_S`; 0 revokes it at once), so
deployments can switch over without downtime. The last usable key cannot be revoked or
rolled away: the merchant would be locked out of its own account.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.domain import tokens
from zpay.domain.errors import Conflict, InvalidRequest, NotFound
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page, page_body
from zpay.services.views import ts
from zpay.store.ids import new_id
from zpay.store.models import ApiKey, Merchant

MAX_NAME_CHARS = 100
MAX_OVERLAP_S = 7 * 24 * 3600
DEFAULT_OVERLAP_S = 24 * 3600


def key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and now >= key.expires_at:
        return "expired"
    return "active"


def api_key_view(key: ApiKey, now: datetime, *, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": key.id, "object": "api_key", "name": key.name, "hint": key.hint,
        "status": key_status(key, now), "created_at": ts(key.created_at),
        "expires_at": ts(key.expires_at), "revoked_at": ts(key.revoked_at),
    }
    if secret is not None:
        body["secret"] = secret  # shown once
    return body


def _name(name: str | None) -> str | None:
    if name is not None and not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InvalidRequest(f"name must be 1 to {MAX_NAME_CHARS} characters",
                             code="invalid_name")
    return name


def _usable(now: datetime) -> Any:
    return (ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))


async def _new_key(s: AsyncSession, merchant_id: str, name: str | None,
                   now: datetime) -> tuple[ApiKey, str]:
    merchant = await s.get(Merchant, merchant_id)
    assert merchant is not None
    secret = tokens.generate("sk", merchant.environment)
    key = ApiKey(id=new_id("key"), merchant_id=merchant_id, token_hash=tokens.token_hash(secret),
                 hint=tokens.hint(secret), name=name, created_at=now, revoked_at=None,
                 expires_at=None)
    s.add(key)
    return key, secret


async def _load(s: AsyncSession, principal: Principal, key_id: str, *,
                for_update: bool = True) -> ApiKey:
    query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.merchant_id == principal.merchant_id)
    key = (await s.execute(query.with_for_update() if for_update else query)).scalar()
    if key is None:
        raise NotFound(f"no API key {key_id!r}", code="api_key_not_found")
    return key


async def _lock_merchant(s: AsyncSession, merchant_id: str) -> None:
    """Serialize key changes of one merchant: two concurrent revocations cannot both see
    the other key as the one left."""
    await s.execute(select(Merchant.id).where(Merchant.id == merchant_id).with_for_update())


async def _others_usable(s: AsyncSession, key: ApiKey, now: datetime) -> int:
    rows = (await s.execute(select(ApiKey.id).where(
        ApiKey.merchant_id == key.merchant_id, ApiKey.id != key.id, *_usable(now)))).all()
    return len(rows)


async def create_api_key(ctx: AppContext, principal: Principal,
                         name: str | None = None) -> dict[str, Any]:
    principal.require_merchant("manage API keys")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key, secret = await _new_key(s, principal.merchant_id, _name(name), now)
    return api_key_view(key, now, secret=secret)


async def list_api_keys(ctx: AppContext, principal: Principal, page: Page) -> dict[str, Any]:
    principal.require_merchant("manage API keys")
    now = ctx.now()
    async with ctx.db.sessions() as s:
        rows = (await s.execute(page.apply(
            select(ApiKey).where(ApiKey.merchant_id == principal.merchant_id), ApiKey.id)
        )).scalars().all()
    return page_body(rows, page, lambda k: api_key_view(k, now))


async def get_api_key(ctx: AppContext, principal: Principal, key_id: str) -> dict[str, Any]:
    principal.require_merchant("manage API keys")
    async with ctx.db.sessions() as s:
        key = await _load(s, principal, key_id, for_update=False)
    return api_key_view(key, ctx.now())


async def revoke_api_key(ctx: AppContext, principal: Principal, key_id: str) -> dict[str, Any]:
    """Revoked at once: the next call with it is 401. Revoking twice is a no-op."""
    principal.require_merchant("manage API keys")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        await _lock_merchant(s, principal.merchant_id)
        key = await _load(s, principal, key_id)
        if key.revoked_at is None:
            if key_status(key, now) == "active" and not await _others_usable(s, key, now):
                raise Conflict("this is the merchant's last usable API key; create another "
                               "one first", code="last_api_key")
            key.revoked_at = now
    return api_key_view(key, now)


async def roll_api_key(ctx: AppContext, principal: Principal, key_id: str,
                       overlap_seconds: int | None = None) -> dict[str, Any]:
    """A new key (shown once, same name); the old one keeps working for `overlap_seconds`
    (default a day, at most a week; 0: revoked now)."""
    principal.require_merchant("manage API keys")
    overlap = DEFAULT_OVERLAP_S if overlap_seconds is None else overlap_seconds
    if not 0 <= overlap <= MAX_OVERLAP_S:
        raise InvalidRequest(f"overlap_seconds must be between 0 and {MAX_OVERLAP_S}",
                             code="invalid_overlap")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        await _lock_merchant(s, principal.merchant_id)
        old = await _load(s, principal, key_id)
        if key_status(old, now) != "active":
            raise Conflict(f"API key {key_id} is {key_status(old, now)}; only an active key "
                           "can be rolled", code="api_key_not_active")
        new, secret = await _new_key(s, principal.merchant_id, old.name, now)
        if overlap == 0:
            old.revoked_at = now
        else:
            ends = now + timedelta(seconds=overlap)
            old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
    return {**api_key_view(new, now, secret=secret),
            "rolled_from": api_key_view(old, now)}
