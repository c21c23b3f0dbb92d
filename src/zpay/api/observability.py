"""Watching the server: request ids, one log line per request, metrics, liveness, readiness.

`RequestObserver` wraps the whole Litestar ASGI handler (outside routing, so unmatched
routes and refusals by other middleware are seen too). Per HTTP request it

- takes the client's `X-Request-Id` when sane, else makes one; echoes it in the response
  and makes it available to the problem builder (`zpay.api.request_id`);
- logs ONE line on `zpay.access`: method, route template, status, latency, request id —
  never the path's query, a header value, a token or a body;
- counts the request and its latency by route template, and the outcome of payment
  attempts (`POST /v1/payments`) by outcome and reason code.

`GET /metrics` renders the Prometheus text format (`zpay.metrics`); `GET /ready` answers
200 when the database and every chain answer, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import func, select, text

from zpay.api.request_id import (
    HEADER,
    accept_or_generate,
    current_request_id,
    reset_request_id,
    set_request_id,
)
from zpay.chains.registry import get_network
from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.metrics import (
    CONTENT_TYPE_LATEST,
    DatabaseGauges,
    process_metrics,
    render,
    seconds_since,
)
from zpay.services.context import AppContext
from zpay.store.models import Event, Payment, SessionKey, WebhookDelivery

access_log = logging.getLogger("zpay.access")
log = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # the route label of a request no route matched (bounded cardinality)
READY_TIMEOUT_S = 3.0
_PAYMENTS_PATH = "/v1/payments"
_HOLDING = (PaymentStatus.AUTHORIZED.value, PaymentStatus.SUBMITTED.value)
_EXPIRABLE = (KeyStatus.PENDING_APPROVAL.value, KeyStatus.ACTIVE.value,
              KeyStatus.EXHAUSTED.value)


# ---------------------------------------------------------------------------- logging

_ACCESS_FIELDS = ("method", "route", "status", "latency_ms", "request_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the access fields when
    present, the current request id, and the exception type (never its traceback text,
    which may quote data)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _ACCESS_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if "request_id" not in out and (rid := current_request_id()) is not None:
            out["request_id"] = rid
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for `zpay serve` / `zpay worker`: one handler on stderr, text or JSON,
    zpay's loggers at `level`. Uvicorn's own access log is off (ours replaces it)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"ZPAY_LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("zpay").setLevel(level.upper())
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


# ---------------------------------------------------------------------------- middleware

def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _classify_payment(status: int, body: bytes, replayed: bool) -> tuple[str, str] | None:
    """(outcome, reason) of a `POST /v1/payments` answer; None when it was no attempt
    (unauthenticated, rate limited) or a replay of one already counted."""
    if replayed or status in (401, 429):
        return None
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    if status < 400:
        return str(doc.get("status", "unknown")), str(doc.get("failure_code") or "none")
    code = str(doc.get("code", "unknown"))
    payment = doc.get("payment")
    if isinstance(payment, dict) and isinstance(payment.get("status"), str):
        return payment["status"], code  # a payment that ended failed, answered as a problem
    if status == 402:
        return "refused", code
    return ("invalid" if status < 500 else "error"), code


class RequestObserver:
    """The outermost ASGI wrapper (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accept_or_generate(_header(scope, HEADER.encode()))
        token = set_request_id(rid)
        method = str(scope.get("method", "GET"))
        watch_payment = method == "POST" and scope.get("path", "").rstrip("/") == _PAYMENTS_PATH
        started = time.perf_counter()
        status = 500
        replayed = False
        recorded = False
        chunks: list[bytes] = []

        def record() -> None:
            # Before the last byte leaves: a client that reads the answer and scrapes
            # /metrics next always sees this request counted.
            nonlocal recorded
            recorded = True
            route = str(scope.get("path_template") or UNMATCHED)
            self._record(method, route, status, time.perf_counter() - started, rid)
            if watch_payment and route == _PAYMENTS_PATH:
                outcome = _classify_payment(status, b"".join(chunks), replayed)
                if outcome is not None:
                    process_metrics().payment(*outcome)

        async def observed_send(message: Message) -> None:
            nonlocal status, replayed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                replayed = any(k.lower() == b"idempotent-replayed" for k, _ in headers)
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            elif message["type"] == "http.response.body":
                if watch_payment:
                    chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False) and not recorded:
                    record()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if not recorded:  # no complete answer (an error, a disconnect)
                record()
            reset_request_id(token)

    @staticmethod
    def _record(method: str, route: str, status: int, elapsed_s: float, rid: str) -> None:
        metrics = process_metrics()
        metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
        metrics.http_latency.labels(method=method, route=route).observe(elapsed_s)
        latency_ms = round(elapsed_s * 1000, 1)
        access_log.info("%s %s %d %.1fms request_id=%s", method, route, status, latency_ms, rid,
                        extra={"method": method, "route": route, "status": status,
                               "latency_ms": latency_ms, "request_id": rid})


# ---------------------------------------------------------------------------- endpoints

async def read_gauges(ctx: AppContext) -> DatabaseGauges:
    """The deployment-wide gauges, from indexed columns only."""
    now = ctx.now()
    async with ctx.db.sessions() as s:
        held_rows = (await s.execute(
            select(Payment.chain, SessionKey.token_symbol, func.count(), func.sum(Payment.amount))
            .join(SessionKey, SessionKey.id == Payment.session_key_id)
            .where(Payment.status.in_(_HOLDING))
            .group_by(Payment.chain, SessionKey.token_symbol))).all()
        backlog, oldest_pending = (await s.execute(
            select(func.count(), func.min(WebhookDelivery.created_at))
            .where(WebhookDelivery.status == "pending"))).one()
        due_delivery = (await s.execute(
            select(func.min(WebhookDelivery.next_attempt_at))
            .where(WebhookDelivery.status == "pending",
                   WebhookDelivery.next_attempt_at <= now))).scalar()
        undispatched = (await s.execute(
            select(func.min(Event.created_at)).where(Event.dispatched.is_(False)))).scalar()
        overdue_key = (await s.execute(
            select(func.min(SessionKey.expires_at))
            .where(SessionKey.status.in_(_EXPIRABLE), SessionKey.expires_at <= now))).scalar()
        in_flight = (await s.execute(
            select(func.min(Payment.updated_at))
            .where(Payment.status == PaymentStatus.SUBMITTED.value))).scalar()
    return DatabaseGauges(
        holds_outstanding=sum(int(count) for _, _, count, _ in held_rows),
        held_base_units={(chain, token): int(total or 0) for chain, token, _, total in held_rows},
        webhook_backlog=int(backlog),
        webhook_backlog_oldest_s=seconds_since(oldest_pending, now),
        job_lag_s={"webhooks": seconds_since(due_delivery, now),
                   "dispatch": seconds_since(undispatched, now),
                   "expire": seconds_since(overdue_key, now),
                   "reconcile": seconds_since(in_flight, now)},
    )


@get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    ctx: AppContext = request.app.state.ctx
    try:
        gauges: DatabaseGauges | None = await asyncio.wait_for(read_gauges(ctx),
                                                               READY_TIMEOUT_S)
    except Exception as exc:  # the process counters are still worth serving
        log.warning("metrics: database gauges unavailable (%s)", type(exc).__name__)
        gauges = None
    return Response(render(gauges), media_type=CONTENT_TYPE_LATEST)


async def _check_database(ctx: AppContext) -> None:
    async with ctx.db.sessions() as s:
        await s.execute(text("SELECT 1"))


async def _check_chain(ctx: AppContext, name: str) -> None:
    adapter = ctx.chains.get(name)
    spec = get_network(name)
    symbol = next(iter(spec.tokens))
    token = adapter.token(symbol)
    await adapter.balance(token.address, token)  # any read that needs the node


async def readiness(ctx: AppContext) -> tuple[bool, dict[str, str]]:
    checks: dict[str, Any] = {"database": _check_database(ctx)}
    for name in ctx.chains.adapters:
        checks[f"chain:{name}"] = _check_chain(ctx, name)
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, READY_TIMEOUT_S)
            results[name] = "ok"
        except Exception as exc:
            log.warning("readiness: %s unavailable (%s)", name, type(exc).__name__)
            results[name] = "unavailable"
    return all(v == "ok" for v in results.values()), results


@get("/ready", tags=["ops"], summary="Readiness: the database and every chain answer",
     description="200 when the database and each enabled chain answer within "
                 f"{READY_TIMEOUT_S:g} s; 503 (with the failing checks) otherwise.")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    ok, checks = await readiness(request.app.state.ctx)
    body = {"status": "ready" if ok else "unavailable", "checks": checks}
    return Response(body, status_code=200 if ok else 503,
                    headers={} if ok else {"Retry-After": "5"})


# ---------------------------------------------------------------------------- zpay serve

def listening_server(app: ASGIApp, *, host: str, port: int) -> Any:
    """`zpay serve`'s uvicorn server: uvicorn's own access log off (ours replaces it), and
    one line saying where it listens once its sockets are bound. Call `configure_logging`
    first."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            for server in self.servers:
                for sock in server.sockets:
                    bound_host, bound_port = sock.getsockname()[:2]
                    log.warning("zpay listening on http://%s:%s", _url_host(bound_host),
                                bound_port)

    return Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                 log_level="warning"))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
