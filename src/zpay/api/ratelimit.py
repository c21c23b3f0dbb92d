"""Rate limits: per bearer token, per client address, and on refused payment attempts.

An ASGI wrapper around the whole app (inside `RequestObserver`), so a request over its limit
is answered before routing, authentication or parsing cost anything:

- every request counts against its client address (`rate_limit_per_address`) and, when it
  carries `Authorization: Bearer …`, against that token (`rate_limit_per_token`), in fixed
  windows of `rate_limit_window_s`;
- a `POST /v1/payments` answered 4xx (other than 401 and 429: a refusal, an invalid or a
  failed attempt) counts against the token's REFUSAL budget (`rate_limit_refusals` per
  `rate_limit_refusals_window_s`); once spent, that token's payment attempts are answered
  429 before they reach the payment service, so a stolen agent token cannot flood the audit
  log. Successful payments never consume it.

Answers: `429` problem+json (`rate_limited` / `refusals_rate_limited`) with `Retry-After`;
every counted response carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`,
`RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers, as Litestar's middleware
sends them) and the combined `RateLimit: limit=…, remaining=…, reset=…`.

Store (`rate_limit_store`): `memory` counts in this process; `database` keeps one counter
row per window in `rate_limit_counters`, shared by every replica (an upsert per counted
request); `auto` uses the database on PostgreSQL, where replicas run, and memory on SQLite.
The client address is the ASGI client: behind a reverse proxy, uvicorn takes it from
`X-Forwarded-For` when the proxy's address is in `FORWARDED_ALLOW_IPS` (default 127.0.0.1).
If the store fails the request is let through (and logged): limits must not become an outage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from zpay.api.errors import PROBLEM, problem
from zpay.metrics import process_metrics
from zpay.services.auth import bearer_token
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.database import Database
from zpay.store.rate_limit_models import RateLimitCounter

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/health", "/ready", "/metrics", "/static")
_PAYMENTS_PATH = "/v1/payments"
_CLEANUP_EVERY_S = 60.0


class CounterStore(Protocol):
    async def count(self, hits: Sequence[tuple[str, float]], peeks: Sequence[str],
                    now: float) -> dict[str, int]:
        """Add one to each key of `hits` (a counter living until its `expires_at`) and read
        the keys of `peeks` without counting; every key's count after that."""
        ...


class MemoryStore:
    """Counters of this process only."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}
        self._next_cleanup = 0.0

    async def count(self, hits: Sequence[tuple[str, float]], peeks: Sequence[str],
                    now: float) -> dict[str, int]:
        self._cleanup(now)
        out: dict[str, int] = {}
        for key, expires_at in hits:
            _, count = self._counts.get(key, (expires_at, 0))
            self._counts[key] = (expires_at, count + 1)
            out[key] = count + 1
        for key in peeks:
            out[key] = self._counts.get(key, (0.0, 0))[1]
        return out

    def _cleanup(self, now: float) -> None:
        if self._next_cleanup - _CLEANUP_EVERY_S <= now < self._next_cleanup:
            return
        self._next_cleanup = now + _CLEANUP_EVERY_S
        for key in [k for k, (exp, _) in self._counts.items() if exp < now]:
            del self._counts[key]


class DatabaseStore:
    """Counters in `rate_limit_counters`, shared by every process on the database: ONE
    statement per counted request (a multi-row `INSERT … ON CONFLICT DO UPDATE …
    RETURNING`, rows in key order so concurrent requests lock them in one order)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        self._next_cleanup = 0.0

    async def count(self, hits: Sequence[tuple[str, float]], peeks: Sequence[str],
                    now: float) -> dict[str, int]:
        out: dict[str, int] = {}
        async with self.db.transaction() as s:
            if hits:
                insert = self._insert(RateLimitCounter).values([
                    {"key": key, "count": 1, "expires_at": datetime.fromtimestamp(exp, UTC)}
                    for key, exp in sorted(hits)])
                stmt = insert.on_conflict_do_update(
                    index_elements=[RateLimitCounter.key],
                    set_={"count": RateLimitCounter.count + 1},
                ).returning(RateLimitCounter.key, RateLimitCounter.count)
                out.update({key: int(count) for key, count in (await s.execute(stmt)).all()})
            if peeks:
                rows = await s.execute(select(RateLimitCounter.key, RateLimitCounter.count)
                                       .where(RateLimitCounter.key.in_(list(peeks))))
                out.update({key: int(count) for key, count in rows.all()})
        for key in peeks:
            out.setdefault(key, 0)
        await self._cleanup(now)
        return out

    async def _cleanup(self, now: float) -> None:
        """Windows that ended, now and then (by the same clock as the counters)."""
        if self._next_cleanup - _CLEANUP_EVERY_S <= now < self._next_cleanup:
            return
        self._next_cleanup = now + _CLEANUP_EVERY_S
        async with self.db.transaction() as s:
            await s.execute(delete(RateLimitCounter)
                            .where(RateLimitCounter.expires_at < datetime.fromtimestamp(now, UTC)))


def build_store(settings: Settings, db: Database) -> CounterStore:
    kind = settings.rate_limit_store
    if kind == "auto":
        kind = "memory" if settings.is_sqlite else "database"
    if kind == "memory":
        return MemoryStore()
    if kind == "database":
        return DatabaseStore(db)
    raise ValueError(f"ZPAY_RATE_LIMIT_STORE must be auto, memory or database, not {kind!r}")


@dataclass(frozen=True)
class Window:
    """Where a counter stands in its fixed window."""

    name: str  # token | address | refusals
    limit: int
    window_s: int
    count: int
    reset_s: int  # seconds until the window ends

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def headers(self) -> list[tuple[bytes, bytes]]:
        values = {
            "ratelimit-limit": str(self.limit), "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset_s),
            "ratelimit-policy": f"{self.limit};w={self.window_s}",
            "ratelimit": f"limit={self.limit}, remaining={self.remaining}, reset={self.reset_s}",
        }
        return [(k.encode(), v.encode()) for k, v in values.items()]


def _subject(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None


class RateLimiter:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._store: CounterStore | None = None
        self._ctx: AppContext | None = None

    def _context(self, scope: Scope) -> AppContext:
        if self._ctx is None:
            self._ctx = scope["app"].state.ctx
        assert self._ctx is not None
        return self._ctx

    def _store_for(self, ctx: AppContext) -> CounterStore:
        if self._store is None:
            self._store = build_store(self.settings, ctx.db)
        return self._store

    @staticmethod
    def _window(name: str, subject: str, limit: int, window_s: int,
                now: float) -> tuple[str, float, Window]:
        """The counter key of `subject`'s current window, when it ends, and its Window
        (count filled in once counted)."""
        number = math.floor(now / window_s)
        ends = (number + 1) * window_s
        return (f"{name}:{subject}:{number}", ends,
                Window(name, limit, window_s, 0, max(math.ceil(ends - now), 1)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (scope["type"] != "http" or not self.settings.rate_limit_enabled
                or path.startswith(EXEMPT_PREFIXES)):
            await self.app(scope, receive, send)
            return
        ctx = self._context(scope)
        settings = self.settings
        now = ctx.now().timestamp()
        token = _bearer(scope)
        token_subject = _subject(token) if token else None
        is_payment = scope.get("method") == "POST" and path.rstrip("/") == _PAYMENTS_PATH
        client = scope.get("client")
        counted = [self._window("address", _subject(client[0] if client else "-"),
                                settings.rate_limit_per_address, settings.rate_limit_window_s,
                                now)]
        if token_subject is not None:
            counted.append(self._window("token", token_subject, settings.rate_limit_per_token,
                                        settings.rate_limit_window_s, now))
        refusal = (self._window("refusals", token_subject, settings.rate_limit_refusals,
                                settings.rate_limit_refusals_window_s, now)
                   if is_payment and token_subject is not None else None)
        try:
            store = self._store_for(ctx)
            counts = await store.count([(key, ends) for key, ends, _ in counted],
                                       [refusal[0]] if refusal else [], now)
        except Exception as exc:  # fail open: a limit store outage must not be an API outage
            log.warning("rate limit store unavailable (%s); request let through",
                        type(exc).__name__)
            await self.app(scope, receive, send)
            return
        windows = [dataclasses.replace(w, count=counts.get(key, 0)) for key, _, w in counted]
        refusals = (dataclasses.replace(refusal[2], count=counts.get(refusal[0], 0))
                    if refusal else None)
        shown = min(windows, key=lambda w: w.remaining)  # the one that binds first
        for window in windows:
            if window.exceeded:
                await self._refuse(send, window, problem(
                    429, "rate_limited", f"too many requests per {window.name}; retry after "
                    f"{window.reset_s} s", limit=window.name, retry_after=window.reset_s)[1])
                return
        if refusals is not None and refusals.count >= refusals.limit:
            await self._refuse(send, refusals, problem(
                429, "refusals_rate_limited", "too many refused payment attempts with this "
                f"token; retry after {refusals.reset_s} s", limit=refusals.name,
                retry_after=refusals.reset_s)[1])
            return

        async def limited_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if refusal is not None and 400 <= status < 500 and status not in (401, 429):
                    # counted BEFORE the client sees the answer: its next attempt sees it
                    try:
                        await store.count([(refusal[0], refusal[1])], [], now)
                    except Exception as exc:
                        log.warning("rate limit store unavailable (%s)", type(exc).__name__)
                headers = [*list(message.get("headers") or []), *shown.headers()]
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        await self.app(scope, receive, limited_send)

    @staticmethod
    async def _refuse(send: Send, window: Window, body: dict[str, object]) -> None:
        process_metrics().rate_limited.labels(limit=window.name).inc()
        payload = json.dumps(body).encode()
        headers = [(b"content-type", PROBLEM.encode()),
                   (b"content-length", str(len(payload)).encode()),
                   (b"retry-after", str(window.reset_s).encode()), *window.headers()]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

