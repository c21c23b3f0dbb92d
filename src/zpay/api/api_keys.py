"""`/v1/api-keys`: the merchant's secret keys (merchant key only)."""

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

    @post(summary="Create a secret API key",
          description="A new secret key for this merchant; `secret` is shown once.")
    async def create(self, ctx: AppContext, principal: Principal,
                     data: ApiKeyCreate | None = None) -> Json:
        return await api_keys.create_api_key(ctx, principal, data.name if data else None)

    @get(summary="List API keys", description="Every key of this merchant, newest first: "
         "name, status and a hint (prefix and last four characters), never the secret.")
    async def list_(self, ctx: AppContext, principal: Principal, page: Page) -> Json:
        return await api_keys.list_api_keys(ctx, principal, page)

    @get("/{key_id:str}", summary="Get an API key")
    async def get_(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await api_keys.get_api_key(ctx, principal, key_id)

    @post("/{key_id:str}/revoke", status_code=200, summary="Revoke an API key",
          description="The next call with this key is refused (401). The last usable key "
                      "cannot be revoked (409 `last_api_key`).")
    async def revoke(self, key_id: str, ctx: AppContext, principal: Principal) -> Json:
        return await api_keys.revoke_api_key(ctx, principal, key_id)

    @post("/{key_id:str}/roll", status_code=201, summary="Roll an API key",
          description="A new key (its `secret` shown once); the old one keeps working for "
                      "`overlap_seconds` (default a day, at most a week; 0 revokes it now), "
                      "then is refused (401 `token_expired`).")
    async def roll(self, key_id: str, ctx: AppContext, principal: Principal,
                   data: ApiKeyRoll | None = None) -> Json:
        return await api_keys.roll_api_key(ctx, principal, key_id,
                                           data.overlap_seconds if data else None)
