"""Authenticated tokens remembered by this process, forgotten the moment any credential
changes anywhere (PostgreSQL `LISTEN/NOTIFY`, see store.credentials).

A hit answers a request without reading the database; a miss reads it (one indexed
lookup) and remembers the principal until the earliest of: its credential's own expiry,
`MAX_AGE_S`, or the next credential change in ANY process — the whole cache is dropped
then (such changes are rare; being exact about which token they touch is not worth a
bug). Rules that keep it exact:

- nothing is remembered unless this process is LISTENing: while the connection is down
  (and until it is back) every call reads the database;
- a lookup that began before a change cannot repopulate the cache after it
  (`generation`);
- on SQLite nothing is remembered at all: no NOTIFY, and another process (the CLI) may
  change a credential.

The window left is the notification's delivery from PostgreSQL to a replica (the same
host or LAN: well under a millisecond); the process that made the change forgets before
it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from zpay.store.credentials import CHANNEL, on_local_change
from zpay.store.database import Database

if TYPE_CHECKING:
    from zpay.services.auth import Principal

log = logging.getLogger(__name__)

MAX_AGE_S = 60  # seconds
MAX_ENTRIES = 100_000
_RECONNECT_S = 1


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    valid_until: datetime | None  # the credential's own expiry
    stored_at: float  # monotonic


class CredentialCache:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._entries: dict[str, _Entry] = {}
        self.generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stop_local = on_local_change(self.clear)

    @property
    def enabled(self) -> bool:
        return self._listening

    def get(self, token_hash: str, now: datetime) -> Principal | None:
        if not self._listening:
            self._start()
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if (time.monotonic() - entry.stored_at > MAX_AGE_S
                or (entry.valid_until is not None and now >= entry.valid_until)):
            self._entries.pop(token_hash, None)
            return None
        return entry.principal

    def put(self, token_hash: str, principal: Principal, valid_until: datetime | None,
            generation: int) -> None:
        """Remember a principal read while the cache was at `generation` (a change since
        means the read may be stale: not remembered)."""
        if not self._listening or generation != self.generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[token_hash] = _Entry(principal, valid_until, time.monotonic())

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    # ---------------------------------------------------------------- the listener

    def _start(self) -> None:
        if self._task is None and not self._closed and self._db.dialect == "postgresql":
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while not self._closed:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: read it on every call
                log.warning("credential cache off (%s); every call reads the database",
                            type(exc).__name__)
            finally:
                self._listening = False
                self.clear()
            if not self._closed:
                await asyncio.sleep(_RECONNECT_S)

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        connection = await asyncpg.connect(self._db.driver_dsn)
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, lambda *_notification: self.clear())
            self.clear()  # whatever changed while nobody listened
            self._listening = True
            await lost.wait()
        finally:
            self._listening = False
            if not connection.is_closed():
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)

    async def close(self) -> None:
        self._closed = True
        self._listening = False
        self._stop_local()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self.clear()


_CACHES: weakref.WeakKeyDictionary[Database, CredentialCache] = weakref.WeakKeyDictionary()


def cache_of(db: Database) -> CredentialCache:
    """One cache per database per process, closed with the database."""
    cache = _CACHES.get(db)
    if cache is None:
        cache = _CACHES[db] = CredentialCache(db)
        db.on_dispose(cache.close)
    return cache
