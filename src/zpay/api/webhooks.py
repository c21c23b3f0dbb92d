"""Webhook endpoints, their delivery log and manual redelivery. Merchant key only."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Router, delete, get, patch, post

from zpay.api.schemas import Body
from zpay.services import fields as f
from zpay.services import webhooks
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page

Json = dict[str, Any]


class EndpointCreate(Body):
    url: f.Url
    description: f.Description | None = None
    event_types: f.EventTypes | None = None
    enabled: bool = True


class EndpointUpdate(Body):
    # UNSET tells "not sent" (unchanged) from null (cleared: every event type).
    url: f.Url | msgspec.UnsetType = msgspec.UNSET
    description: f.Description | msgspec.UnsetType | None = msgspec.UNSET
    event_types: f.EventTypes | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET

    def changes(self) -> Json:
        return {name: value for name in self.__struct_fields__
                if (value := getattr(self, name)) is not msgspec.UNSET}


class WebhookEndpointController(Controller):
    path = "/v1/webhook-endpoints"
    tags = ["webhooks"]

    @post()
    async def create(self, data: EndpointCreate, ctx: AppContext, principal: Principal) -> Json:
        return await webhooks.create_endpoint(
            ctx, principal, webhooks.EndpointRequest(**msgspec.structs.asdict(data)))

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page) -> Json:
        return await webhooks.list_endpoints(ctx, principal, page)

    @get("/{endpoint_id:str}")
    async def get_(self, endpoint_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await webhooks.get_endpoint(ctx, principal, endpoint_id)

    @patch("/{endpoint_id:str}")
    async def update(self, endpoint_id: str, data: EndpointUpdate, ctx: AppContext,
                     principal: Principal) -> Json:
        return await webhooks.update_endpoint(ctx, principal, endpoint_id, data.changes())

    @delete("/{endpoint_id:str}", status_code=200)
    async def delete_(self, endpoint_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await webhooks.delete_endpoint(ctx, principal, endpoint_id)

    @get("/{endpoint_id:str}/deliveries")
    async def deliveries(self, endpoint_id: str, ctx: AppContext, principal: Principal,
                         page: Page, status: str | None = None) -> Json:
        return await webhooks.list_deliveries(ctx, principal, endpoint_id, page, status)


class WebhookDeliveryController(Controller):
    path = "/v1/webhook-deliveries"
    tags = ["webhooks"]

    @get("/{delivery_id:str}")
    async def get_(self, delivery_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await webhooks.get_delivery(ctx, principal, delivery_id)

    @post("/{delivery_id:str}/redeliver", status_code=202)
    async def redeliver(self, delivery_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await webhooks.redeliver(ctx, principal, delivery_id)


# One name for the app's handler list; the paths live on the controllers.
WebhookController = Router(path="/", route_handlers=[WebhookEndpointController,
                                                     WebhookDeliveryController])
