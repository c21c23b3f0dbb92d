"""Idempotency-Key semantics (IETF draft): same key + same body → the same response; same key +
other body → 422; same key while the first request is in flight → 409. Scoped per merchant,
kept for `idempotency_ttl_s` (24 h by default)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from zpay.domain.errors import Conflict, InvalidRequest, ZpayError
from zpay.services.context import AppContext
from zpay.store.ids import new_id
from zpay.store.models import IdempotencyRecord


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


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


async def claim(ctx: AppContext, merchant_id: str, key: str,
                fingerprint: str) -> StoredResponse | None:
    """Claim the key for this request, or return the stored response of a finished one."""
    now = ctx.now()
    for _ in range(3):
        try:
            async with ctx.db.transaction() as s:
                row = (await s.execute(select(IdempotencyRecord).where(
                    IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key
                ).with_for_update())).scalar()
                if row is not None and row.expires_at <= now:
                    await s.delete(row)
                    await s.flush()
                    row = None
                if row is None:
                    s.add(IdempotencyRecord(
                        id=new_id("idem"), merchant_id=merchant_id, key=key,
                        request_hash=fingerprint, status="in_flight", response_status=None,
                        response_body=None, created_at=now,
                        expires_at=now + timedelta(seconds=ctx.settings.idempotency_ttl_s)))
                    return None
                if row.request_hash != fingerprint:
                    raise ZpayError("this Idempotency-Key was used with another request body",
                                    code="idempotency_key_reused")
                if row.status == "in_flight":
                    raise Conflict("a request with this Idempotency-Key is still in flight",
                                   code="idempotency_request_in_flight")
                assert row.response_status is not None and row.response_body is not None
                return StoredResponse(row.response_status, json.loads(row.response_body))
        except IntegrityError:
            continue  # another request inserted the key first; read what it wrote
    raise Conflict("a request with this Idempotency-Key is still in flight",
                   code="idempotency_request_in_flight")


async def complete(ctx: AppContext, merchant_id: str, key: str, response: StoredResponse) -> None:
    async with ctx.db.transaction() as s:
        row = (await s.execute(select(IdempotencyRecord).where(
            IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key
        ).with_for_update())).scalar()
        if row is not None:
            row.status, row.response_status = "completed", response.status
            row.response_body = json.dumps(response.body)


async def release(ctx: AppContext, merchant_id: str, key: str) -> None:
    """Forget an in-flight claim whose request changed nothing, so a retry may run."""
    async with ctx.db.transaction() as s:
        await s.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.merchant_id == merchant_id, IdempotencyRecord.key == key,
            IdempotencyRecord.status == "in_flight"))


async def purge_expired(ctx: AppContext, limit: int = 1000) -> int:
    async with ctx.db.transaction() as s:
        ids = (await s.execute(select(IdempotencyRecord.id).where(
            IdempotencyRecord.expires_at <= ctx.now()).limit(limit))).scalars().all()
        if ids:
            await s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(ids)))
    return len(ids)
