"""Reading the outbox: `GET /v1/events`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from zpay.domain.errors import InvalidRequest
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.events import EVENT_TYPES
from zpay.services.pagination import Page, page_body
from zpay.services.views import event_view
from zpay.store.models import Event


async def list_events(ctx: AppContext, principal: Principal, page: Page, type: str | None = None,
                      object_id: str | None = None) -> dict[str, Any]:
    principal.require_merchant("read events")
    async with ctx.db.sessions() as s:
        stmt = select(Event).where(Event.merchant_id == principal.merchant_id)
        if type is not None:
            if type not in EVENT_TYPES:
                raise InvalidRequest(f"unknown event type {type!r}", code="unknown_event_type",
                                     known_event_types=list(EVENT_TYPES))
            stmt = stmt.where(Event.type == type)
        if object_id is not None:
            stmt = stmt.where(Event.object_id == object_id)
        rows = (await s.execute(page.apply(stmt, Event.id))).scalars().all()
    return page_body(rows, page, event_view)
