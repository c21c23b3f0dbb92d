"""Shared fixtures. Every database test runs on SQLite AND PostgreSQL (migrated by Alembic)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from tests.support import serve
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.migrate import upgrade

PG_DSN = os.environ.get("ZPAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
TABLES = ("rate_limit_counters",
          "dashboard_sessions", "dashboard_users", "user_sessions", "signin_nonces",
          "audit_findings", "relayer_txs", "relayer_accounts",
          "webhook_attempts", "webhook_deliveries", "webhook_endpoints", "events",
          "payment_attempts", "idempotency_records", "x402_payments", "payments", "approvals",
          "wallet_secrets",
          "session_keys", "policy_sessions", "agents", "api_keys", "merchants",
          "chain_instances")


@pytest.fixture(scope="session")
def worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database(worker: str) -> Iterator[str]:
    # Unique per run, so concurrent runs on one server never share a database.
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", secrets.token_hex(4))[:8]
    name = f"zpay_test_{run_id}_{worker}"

    async def recreate() -> None:
        conn = await asyncpg.connect(f"{PG_DSN}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def setup() -> None:
        asyncio.run(recreate())
        upgrade(f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{name}")

    # Requested from inside a running event loop: do the blocking set-up in a thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(setup).result()
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(f"{PG_DSN}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop()).result()


async def _truncate(name: str) -> None:
    conn = await asyncpg.connect(f"{PG_DSN}/{name}")
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path,
                       sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "zpay.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    name = request.getfixturevalue("pg_database")
    await _truncate(name)
    return f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{name}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, data_dir=tmp_path / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        scheduler_enabled=False, webhooks_allow_private=True, confirm_timeout_s=10.0,
        # generous: rate limits are exercised (tests/api/test_rate_limits.py sets its own)
        rate_limit_per_token=1_000_000, rate_limit_per_address=1_000_000,
        rate_limit_refusals=1_000_000,
    )


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[AppContext]:
    from zpay.api.app import build_context

    context = await build_context(settings)
    try:
        yield context
    finally:
        await context.chains.close()
        await context.db.dispose()


@pytest.fixture
async def served(ctx: AppContext) -> AsyncIterator[str]:
    """The app served by uvicorn on a loopback port: real HTTP."""
    async with serve(ctx) as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow end-to-end runs first: with xdist they then overlap the many short tests
    instead of trailing after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
