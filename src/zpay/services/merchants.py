"""Merchants and their secret API keys (shown once, stored hashed)."""

from __future__ import annotations

from dataclasses import dataclass

from zpay.domain import tokens
from zpay.services.context import AppContext
from zpay.store.ids import new_id
from zpay.store.models import ApiKey, Merchant


@dataclass(frozen=True)
class CreatedMerchant:
    merchant_id: str
    name: str
    api_key: str  # shown once


async def create_merchant(ctx: AppContext, name: str, environment: str = "test") -> CreatedMerchant:
    now = ctx.now()
    secret = tokens.generate("sk", environment)
    async with ctx.db.transaction() as s:
        merchant = Merchant(id=new_id("mer"), name=name, environment=environment, created_at=now)
        s.add(merchant)
        await s.flush()
        s.add(
            ApiKey(
                id=new_id("key"),
                merchant_id=merchant.id,
                token_hash=tokens.token_hash(secret),
                hint=tokens.hint(secret),
                created_at=now,
                revoked_at=None,
            )
        )
    return CreatedMerchant(merchant.id, name, secret)
