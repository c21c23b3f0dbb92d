"""Engine and unit of work.

Every state change runs in one explicit transaction (`async with db.transaction() as s`).
On SQLite each transaction starts with BEGIN IMMEDIATE, so writers serialize; on
PostgreSQL the services lock the rows they change with SELECT … FOR UPDATE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from zpay.store import credentials as _credentials  # noqa: F401 - announces credential changes
from zpay.store.direct import Executor, direct_connection
from zpay.store.direct_pool import DirectPool


class NotMigrated(RuntimeError):
    pass


def make_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 60}, pool_size=pool_size,
                                     max_overflow=pool_size)
        _configure_sqlite(engine)
        return engine
    # No ping before each checkout (a round trip per transaction, ~10% of a request): a
    # connection the server dropped fails its first statement, which invalidates the pool
    # (SQLAlchemy's disconnect handling), and recycling bounds a connection's age.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               pool_recycle=1800)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Readers take no write lock; every unit of work that may write serializes up front.
        read_only = connection.get_execution_options().get("zpay_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        # `sessions()` is for reads only (no write lock on SQLite); writes use `transaction()`.
        self.sessions = async_sessionmaker(
            self.engine.execution_options(zpay_read_only=True), expire_on_commit=False)
        self._writers = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.engine.dialect.name == "sqlite" else None
        self._on_dispose: list[Callable[[], Awaitable[None]]] = []
        self._pool_size = pool_size
        self._direct_pool: DirectPool | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success (before the caller answers), rolls back on error."""
        if self._write_lock is None:
            async with self._writers() as session, session.begin():
                yield session
            return
        # SQLite admits one writer; queueing here, in order, beats SQLite's busy handler,
        # which polls with sleeps of up to 100 ms. Other processes still wait on the file lock.
        async with self._write_lock, self._writers() as session, session.begin():
            yield session

    def hot_transaction(self) -> AbstractAsyncContextManager[Executor]:
        """The payment hot path's unit of work, for Core statements only: on PostgreSQL
        straight on asyncpg (store.direct), elsewhere `transaction()`."""
        return self._hot(write=True)

    def hot_reads(self) -> AbstractAsyncContextManager[Executor]:
        """Reads of the hot path (Core statements), each its own snapshot as at READ
        COMMITTED: on PostgreSQL straight on asyncpg without a transaction."""
        return self._hot(write=False)

    @asynccontextmanager
    async def _hot(self, *, write: bool) -> AsyncIterator[Executor]:
        if self.dialect != "postgresql":
            async with self.transaction() if write else self.sessions() as session:
                yield session
            return
        if self._direct_pool is None:
            # Its own `pool_size` connections, apart from SQLAlchemy's pool (which the
            # rest of zpay uses, so it rarely opens its overflow now).
            self._direct_pool = DirectPool(self.driver_dsn, self._pool_size)
        async with direct_connection(self._direct_pool, transaction=write) as executor:
            yield executor

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            try:
                row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
            except Exception:
                return None
            return row[0] if row else None

    async def ensure_migrated(self) -> None:
        from zpay.store.migrate import head_revision

        current, head = await self.current_revision(), head_revision()
        if current != head:
            raise NotMigrated(
                f"the database at {self.safe_url} is not migrated (at {current or 'nothing'}, "
                f"need {head}); run `zpay db upgrade` first"
            )

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def driver_dsn(self) -> str:
        """The URL for a connection of the driver itself (a LISTEN connection)."""
        return self.engine.url.set(drivername=self.engine.url.get_backend_name()
                                   ).render_as_string(hide_password=False)

    def on_dispose(self, close: Callable[[], Awaitable[None]]) -> None:
        """Close `close` (something bound to this database) when the database is disposed."""
        self._on_dispose.append(close)

    async def dispose(self) -> None:
        closers, self._on_dispose = self._on_dispose, []
        for close in closers:
            await close()
        if self._direct_pool is not None:
            await self._direct_pool.close()
            self._direct_pool = None
        await self.engine.dispose()


def make_null_pool_engine(url: str) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool)
