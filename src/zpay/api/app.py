"""The Litestar application factory. Everything is built from one Settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from zpay.api import controllers
from zpay.api.audit import AuditController
from zpay.api.deps import provide_ctx, provide_page, provide_principal
from zpay.api.errors import handle_exception
from zpay.api.events import EventController
from zpay.api.webhooks import WebhookController
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.web import template_config, web_handlers

log = logging.getLogger(__name__)


async def build_context(settings: Settings) -> AppContext:
    from zpay.chains.factory import build_adapter
    from zpay.chains.registry import get_network
    from zpay.custody import custody_from_settings
    from zpay.services.bootstrap import pair_local_chain
    from zpay.services.context import ChainSet
    from zpay.store.database import Database
    from zpay.store.relayer_journal import DbRelayerJournal

    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    try:
        await db.ensure_migrated()
        all_local = all(get_network(name).info.local for name in settings.chains)
        custody = custody_from_settings(
            settings.master_key, settings.master_key_version, settings.previous_master_keys,
            data_dir=settings.data_dir, allow_generated=all_local)
        journal = DbRelayerJournal(db)  # one relayer key, shared by every replica and worker
        chains = ChainSet({name: await build_adapter(name, settings, journal)
                           for name in settings.chains})
        ctx = AppContext(settings=settings, db=db, custody=custody, chains=chains)
        for adapter in chains.adapters.values():
            await pair_local_chain(ctx, adapter)
        return ctx
    except BaseException:
        await db.dispose()
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
        controllers.health, *web_handlers(),
    ]
    return Litestar(
        route_handlers=handlers,
        dependencies={"ctx": Provide(provide_ctx), "principal": Provide(provide_principal),
                      "page": Provide(provide_page)},
        exception_handlers={Exception: handle_exception},
        template_config=template_config(),
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(title="zpay", version="0.1.0", path="/schema"),
        debug=False,
        logging_config=None,
    )
