"""Dependencies: the app context and the authenticated principal."""

from __future__ import annotations

from typing import Any

from litestar import Request

from zpay.api.edge import principal_of
from zpay.services.auth import Principal, authenticate
from zpay.services.context import AppContext
from zpay.services.pagination import Page


def context_of(request: Request[Any, Any, Any]) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def provide_ctx(request: Request[Any, Any, Any]) -> AppContext:
    return context_of(request)


async def provide_principal(ctx: AppContext, request: Request[Any, Any, Any]) -> Principal:
    # Authenticated by the edge guard before anything was parsed; the fallback serves a
    # handler mounted without that guard. (It takes `ctx` so that Litestar resolves the
    # two one after the other: dependencies of one level run in an anyio task group,
    # which costs more than both.)
    return principal_of(request) or await authenticate(ctx, request.headers.get("authorization"))


async def provide_page(limit: int = 20, starting_after: str | None = None) -> Page:
    return Page(limit=limit, starting_after=starting_after)
