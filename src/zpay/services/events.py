"""The transactional outbox: events are rows written in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from zpay.services.rows import insert_row
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import Event

EVENT_TYPES = (
    "session_key.created", "session_key.activated", "session_key.exhausted",
    "session_key.expired", "session_key.revoked", "session_key.topped_up",
    "session_key.refunded", "session.created", "session.expired", "session.revoked",
    "payment.succeeded", "payment.failed", "webhook_endpoint.disabled",
    "audit.mismatch", "audit.resolved",
)


def emit(
    session: AsyncSession, *, merchant_id: str, type: str, object_type: str, object_id: str,
    data: dict[str, Any], now: datetime,
) -> Event:
    assert type in EVENT_TYPES, type
    event = Event(id=new_id("evt"), merchant_id=merchant_id, type=type, object_type=object_type,
                  object_id=object_id, data=data, dispatched=False, created_at=now)
    session.add(event)
    return event


async def write(
    session: Executor, *, merchant_id: str, type: str, object_type: str, object_id: str,
    data: dict[str, Any], now: datetime,
) -> None:
    """`emit` in one INSERT statement (the payment hot path, which writes without the ORM's
    unit of work)."""
    assert type in EVENT_TYPES, type
    await insert_row(session, Event, dict(
        id=new_id("evt"), merchant_id=merchant_id, type=type, object_type=object_type,
        object_id=object_id, data=data, dispatched=False, created_at=now))
