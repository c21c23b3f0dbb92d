"""`GET /v1/events`: the outbox, paginated, filtered by type and object."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from zpay.services import events_query
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page,
                    type: str | None = None, object_id: str | None = None) -> dict[str, Any]:
        return await events_query.list_events(ctx, principal, page, type, object_id)
