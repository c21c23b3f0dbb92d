"""The Litestar application factory. Everything is built from one Settings object."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide

from zpay.api import controllers
from zpay.api.api_keys import ApiKeyController
from zpay.api.audit import AuditController
from zpay.api.deps import provide_ctx, provide_page, provide_principal
from zpay.api.edge import MAX_BODY_BYTES, edge_guard
from zpay.api.errors import handle_exception
from zpay.api.events import EventController
from zpay.api.observability import RequestObserver, metrics_endpoint, ready
from zpay.api.openapi import openapi_config
from zpay.api.ratelimit import RateLimiter
from zpay.api.webhooks import WebhookController
from zpay.api.x402 import X402Controller
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.web import template_config, web_handlers

log = logging.getLogger(__name__)


async def build_context(settings: Settings) -> AppContext:
    from zpay.chains.factory import build_adapter
    from zpay.chains.registry import get_network
    from zpay.custody import custody_from_settings
    from zpay.services.bootstrap import pair_local_chain, startup_refusal
    from zpay.services.context import ChainSet
    from zpay.store.database import Database
    from zpay.store.relayer_journal import DbRelayerJournal

    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    built: dict[str, Any] = {}
    try:
        await db.ensure_migrated()
        all_local = all(get_network(name).info.local for name in settings.chains)
        custody = custody_from_settings(
            settings.master_key, settings.master_key_version, settings.previous_master_keys,
            data_dir=settings.data_dir, allow_generated=all_local)
        journal = DbRelayerJournal(db)  # one relayer key, shared by every replica and worker
        for name in settings.chains:
            built[name] = await build_adapter(name, settings, journal)
        ctx = AppContext(settings=settings, db=db, custody=custody, chains=ChainSet(built))
        for adapter in built.values():
            await pair_local_chain(ctx, adapter)
        return ctx
    except BaseException as exc:
        for adapter in built.values():  # an embedded chain stops, connections close
            with contextlib.suppress(Exception):
                await adapter.close()
        await db.dispose()
        refusal = startup_refusal(exc, settings.data_dir, db.safe_url)
        if refusal is not None:
            raise refusal from exc
        raise


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> Litestar:
    settings = settings or (context.settings if context else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        ctx = context or await build_context(settings)
        app.state.ctx = ctx
        scheduler = None
        if settings.scheduler_enabled:
            from zpay.jobs.scheduler import start_scheduler

            scheduler = start_scheduler(ctx)
        try:
            yield
        finally:
            if scheduler is not None:
                await scheduler.stop()
            if context is None:
                await ctx.chains.close()
                await ctx.db.dispose()

    handlers: list[Any] = [
        controllers.AgentController, controllers.SessionController,
        controllers.SessionKeyController, controllers.PaymentController,
        controllers.FaucetController, EventController, WebhookController, AuditController,
        X402Controller,
        controllers.health, *web_handlers(),
    ]
    from zpay.mcp.http import McpEndpoint  # the MCP tools at /mcp, as the calling agent

    mcp = McpEndpoint(settings)
    handlers.append(mcp.route_handler())
    handlers += [metrics_endpoint, ready, ApiKeyController]  # ops; merchant keys
    app = Litestar(
        route_handlers=handlers,
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False),
                      "principal": Provide(provide_principal),
                      "page": Provide(provide_page)},
        exception_handlers={Exception: handle_exception},
        guards=[edge_guard],  # authentication and input hygiene before any parsing
        request_max_body_size=MAX_BODY_BYTES,
        template_config=template_config(),
        lifespan=[lifespan, mcp.lifespan],  # then the MCP session manager, inside it
        openapi_config=openapi_config("0.1.0"),  # completed, docs without CDN (api/openapi)
        debug=False,
        logging_config=None,
    )
    # Outside routing: every request gets an id, a log line and its metrics (unmatched
    # routes too), and is rate limited before anything else reads it.
    app.asgi_handler = RequestObserver(RateLimiter(app.asgi_handler, settings))
    return app
