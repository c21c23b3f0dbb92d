"""Helpers for the job tests: a clock to move by hand, merchants, endpoints, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zpay.services import webhooks
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.merchants import create_merchant
from zpay.store.models import Event


class Clock:
    """`ctx.clock = Clock()`: time stands still until the test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = (start or datetime.now(UTC)).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when

    @property
    def unix(self) -> int:
        return int(self.now.timestamp())


async def merchant(ctx: AppContext, name: str = "shop") -> Principal:
    created = await create_merchant(ctx, name)
    return Principal(created.merchant_id, Role.MERCHANT)


async def endpoint(ctx: AppContext, principal: Principal, url: str,
                   event_types: list[str] | None = None) -> dict[str, Any]:
    """An endpoint created through the service; the body carries the `secret`."""
    return await webhooks.create_endpoint(
        ctx, principal, webhooks.EndpointRequest(url=url, event_types=event_types))


async def events(ctx: AppContext, principal: Principal, count: int = 1,
                 type_: str = "session.created") -> list[str]:
    """Outbox rows written the way services write them; returns their ids."""
    async with ctx.db.transaction() as s:
        rows: list[Event] = [
            emit(s, merchant_id=principal.merchant_id, type=type_, object_type="session",
                 object_id=f"ses_test{i}", data={"n": i}, now=ctx.now())
            for i in range(count)]
    return [r.id for r in rows]
