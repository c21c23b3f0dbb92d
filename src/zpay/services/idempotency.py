"""Idempotency-Key semantics (IETF draft), bound to the money.

The record is written in the SAME transaction as the payment's hold (or its refusal), so it
can never say less than the books: a request that died before that commit left nothing and
a retry runs afresh; one that committed is answered from the payment as it stands now,
whatever happened to the process that made it (crash, cancellation, timeout). Same key +
other body → 422. Scoped per merchant, kept for `idempotency_ttl_s` (24 h by default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.domain.errors import InvalidRequest, ZpayError
from zpay.services.context import AppContext
from zpay.store.ids import new_id
from zpay.store.models import IdempotencyRecord


@dataclass(frozen=True)
class Remembered:
    """What a key was used for: a payment (answer it as it stands) or a refusal."""

    payment_id: str | None
    refusal: dict[str, Any] | None


def validate_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise InvalidRequest("the Idempotency-Key header is required for payments",
                             code="idempotency_key_missing")
    if len(key) > 255 or not key.isprintable():
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable characters",
                             code="idempotency_key_invalid")
    return key


def request_fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


async def recall(s: AsyncSession, merchant_id: str, key: str, fingerprint: str,
                 now: datetime) -> Remembered | None:
    """Inside the caller's transaction: what this key already did, or None (an expired
    record is dropped). Another body under the same key is refused."""
    row = (await s.execute(select(IdempotencyRecord).where(
        IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key
    ).with_for_update())).scalar()
    if row is None:
        return None
    if row.expires_at <= now:
        await s.delete(row)
        await s.flush()
        return None
    if row.request_hash != fingerprint:
        raise ZpayError("this Idempotency-Key was used with another request body",
                        code="idempotency_key_reused")
    refusal = json.loads(row.response_body) if row.response_body else None
    return Remembered(row.payment_id, refusal)


def remember(s: AsyncSession, ctx: AppContext, merchant_id: str, key: str, fingerprint: str,
             *, payment_id: str | None = None, refusal: dict[str, Any] | None = None) -> None:
    """Bind the key, in the caller's transaction, to its payment or its refusal. A
    concurrent request with the same key fails this insert at commit and, retried, reads
    what the winner wrote."""
    now = ctx.now()
    s.add(IdempotencyRecord(
        id=new_id("idem"), merchant_id=merchant_id, key=key, request_hash=fingerprint,
        status="completed", payment_id=payment_id,
        response_status=None if refusal is None else 402,
        response_body=None if refusal is None else json.dumps(refusal), created_at=now,
        expires_at=now + timedelta(seconds=ctx.settings.idempotency_ttl_s)))


async def purge_expired(ctx: AppContext, limit: int = 1000) -> int:
    async with ctx.db.transaction() as s:
        ids = (await s.execute(select(IdempotencyRecord.id).where(
            IdempotencyRecord.expires_at <= ctx.now()).limit(limit))).scalars().all()
        if ids:
            await s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(ids)))
    return len(ids)
