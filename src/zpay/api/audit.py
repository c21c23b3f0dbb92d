"""`GET /v1/audit`: the merchant's session wallets, books against chain, audited live."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from zpay.services import audit
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.pagination import Page


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]

    @get()
    async def list_(
        self, ctx: AppContext, principal: Principal, page: Page, session_key_id: str | None = None
    ) -> dict[str, Any]:
        return await audit.list_findings(ctx, principal, page, session_key_id)
