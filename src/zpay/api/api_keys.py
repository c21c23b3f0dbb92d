"""`/v1/api-keys`: the merchant's secret keys (merchant key only). Summaries and
descriptions are in `zpay.api.openapi.OPS`."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post

from zpay.api.schemas import ApiKeyCreate, ApiKeyRoll
from zpay.services import api_keys
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page

Json = dict[str, Any]


class ApiKeyController(Controller):
    path = "/v1/api-keys"
    tags = ["api keys"]

    @post()
    async def create(self, ctx: AppContext, principal: Principal,
                     data: ApiKeyCreate | None = None) -> Json:
        return await api_keys.create_api_key(ctx, principal, data.name if data else None)

    @get()
    async def list_(self, ctx: AppContext, principal: Principal, page: Page) -> Json:
        return await api_keys.list_api_keys(ctx, principal, page)

    @get("/{key_id:str}")
    async def get_(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await api_keys.get_api_key(ctx, principal, key_id)

    @post("/{key_id:str}/revoke", status_code=200)
    async def revoke(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await api_keys.revoke_api_key(ctx, principal, key_id)

    @post("/{key_id:str}/roll", status_code=201)
    async def roll(self, key_id: str, ctx: AppContext, principal: Principal,
                   data: ApiKeyRoll | None = None) -> Json:
        return await api_keys.roll_api_key(ctx, principal, key_id,
                                           data.overlap_seconds if data else None)
