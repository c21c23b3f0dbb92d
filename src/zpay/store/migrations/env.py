"""Alembic environment: runs migrations with the async engine of the configured URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

from zpay.store import (
    audit_models,  # noqa: F401 - its table is part of the metadata
    dashboard_models,  # noqa: F401 - its tables are part of the metadata
    rate_limit_models,  # noqa: F401 - its table is part of the metadata
    relayer_models,  # noqa: F401 - its tables are part of the metadata
    user_models,  # noqa: F401 - its tables are part of the metadata
    x402_models,  # noqa: F401 - its table is part of the metadata
)
from zpay.store.database import make_null_pool_engine
from zpay.store.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or ""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = make_null_pool_engine(url)
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
asyncio.run(_main())
