"""Webhooks: fan the outbox out to endpoints, then deliver, signed, at least once.

Dispatch turns each undispatched event into one `webhook_deliveries` row per
enabled endpoint whose filter matches, in the same unit of work that marks the
event dispatched.

Delivery claims due rows and, in the claiming transaction, pushes their
`next_attempt_at` past the time the sends can take (a lease): another worker
does not see them as due, and a worker that dies mid-send leaves them to be
claimed again when the lease ends. The HTTP calls happen after that commit,
several at once; results are recorded as they arrive, a few per transaction.
`webhook-id` is the event id, the same on every retry and redelivery, for
receivers to de-duplicate.

After a delivery's last attempt fails (`zpay.webhooks.retry`, about three
days), it is `failed`; an endpoint with `DISABLE_AFTER_FAILED_DELIVERIES` such
deliveries in a row, no success in between, is disabled with a reason and a
`webhook_endpoint.disabled` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.views import endpoint_view, ts
from zpay.services.webhooks import endpoint_secret, matches
from zpay.store.ids import new_id
from zpay.store.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from zpay.webhooks.retry import next_attempt_at
from zpay.webhooks.sender import DeliveryResult, WebhookSender
from zpay.webhooks.signing import build_headers

log = logging.getLogger(__name__)

DISPATCH_BATCH = 200
CONCURRENCY = 10  # HTTP requests in flight per worker; see docs/webhooks.md, "Throughput"
WINDOW = 50  # claimed and not yet sent or recorded, per worker
REFILL = WINDOW // 2  # claim or record this many at a time: fewer, larger transactions
MAX_ATTEMPTS_PER_TICK = 500
FLUSH_AFTER_S = 0.05  # a result waits at most about this long to be recorded
MAX_BATCHES = 10  # dispatch batches per tick
LEASE_MARGIN = timedelta(seconds=60)
DISABLE_AFTER_FAILED_DELIVERIES = 5
_MAX_ERROR_CHARS = 500  # webhook_attempts.error


def payload(event: Event) -> bytes:
    """The body every attempt of this event sends, byte for byte."""
    body = {"id": event.id, "type": event.type, "created_at": ts(event.created_at),
            "data": event.data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def dispatch_events(ctx: AppContext, *, batch: int = DISPATCH_BATCH) -> int:
    """One unit of work: fan out up to `batch` events. Returns how many."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        events = (await s.execute(
            select(Event).where(Event.dispatched.is_(False)).order_by(Event.id).limit(batch)
            .with_for_update(skip_locked=True)
        )).scalars().all()
        if not events:
            return 0
        endpoints: dict[str, list[WebhookEndpoint]] = defaultdict(list)
        for endpoint in (await s.execute(select(WebhookEndpoint).where(
            WebhookEndpoint.merchant_id.in_({e.merchant_id for e in events}),
            WebhookEndpoint.enabled.is_(True)))).scalars():
            endpoints[endpoint.merchant_id].append(endpoint)
        for event in events:
            for endpoint in endpoints[event.merchant_id]:
                if matches(endpoint, event.type):
                    s.add(WebhookDelivery(
                        id=new_id("whd"), merchant_id=event.merchant_id,
                        endpoint_id=endpoint.id, event_id=event.id, status="pending",
                        attempt_count=0, next_attempt_at=now, last_status_code=None,
                        created_at=now, updated_at=now))
            event.dispatched = True
    return len(events)


@dataclass(frozen=True)
class _Claimed:
    delivery_id: str
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    body: bytes


def _lease(ctx: AppContext) -> timedelta:
    # A claimed send may wait for a free connection behind the rest of the window.
    waves = math.ceil(WINDOW / CONCURRENCY)
    return timedelta(seconds=waves * ctx.settings.webhook_timeout_s) + LEASE_MARGIN


async def _claim(ctx: AppContext, batch: int) -> list[_Claimed]:
    now = ctx.now()
    leased_until = now + _lease(ctx)
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(WebhookDelivery, WebhookEndpoint, Event)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                   WebhookEndpoint.enabled.is_(True))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(batch)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )).all()
        secrets: dict[str, str] = {}
        claimed = []
        for delivery, endpoint, event in rows:
            delivery.next_attempt_at = leased_until
            if endpoint.id not in secrets:
                secrets[endpoint.id] = endpoint_secret(ctx, endpoint)
            claimed.append(_Claimed(delivery.id, endpoint.id, endpoint.url,
                                    secrets[endpoint.id], event.id, payload(event)))
    return claimed


def _disable(endpoint: WebhookEndpoint, outcomes: list[_Outcome], now: datetime) -> None:
    result = next(o.result for o in reversed(outcomes) if o.job.endpoint_id == endpoint.id)
    last = f"HTTP {result.status_code}" if result.status_code else (result.error or "no answer")
    endpoint.enabled, endpoint.updated_at = False, now
    endpoint.disabled_reason = (f"{endpoint.consecutive_failures} deliveries in a row failed "
                                f"after every retry (last: {last})")[:200]


@dataclass(frozen=True)
class _Outcome:
    job: _Claimed
    sent_at: datetime
    finished_at: datetime
    result: DeliveryResult


def _apply(rng: random.Random, endpoint: WebhookEndpoint, delivery: WebhookDelivery,
           outcome: _Outcome) -> WebhookAttempt:
    """One attempt's result on its delivery and endpoint rows; the attempt to log."""
    result = outcome.result
    number = delivery.attempt_count + 1
    delivery.attempt_count, delivery.last_status_code = number, result.status_code
    delivery.updated_at = outcome.finished_at
    if result.ok:
        delivery.status, delivery.next_attempt_at = "succeeded", None
        endpoint.consecutive_failures = 0
    else:
        delivery.next_attempt_at = next_attempt_at(number, outcome.finished_at, rng)
        if delivery.next_attempt_at is None:
            delivery.status = "failed"
            endpoint.consecutive_failures += 1
    return WebhookAttempt(
        id=new_id("wha"), delivery_id=delivery.id, attempt_number=number,
        status_code=result.status_code, latency_ms=result.latency_ms,
        error=result.error[:_MAX_ERROR_CHARS] if result.error else None,
        created_at=outcome.sent_at)


async def _record(ctx: AppContext, rng: random.Random, outcomes: list[_Outcome]) -> None:
    """A batch's results in one unit of work: one commit, not one per delivery, and the
    endpoint rows locked once (they are shared by the whole batch)."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        # Endpoints before deliveries, each in id order, like every other writer: no
        # deadlocks. NO KEY UPDATE leaves new deliveries (foreign keys to these rows) free
        # to be inserted meanwhile.
        endpoints = {e.id: e for e in (await s.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.id.in_({o.job.endpoint_id for o in outcomes}))
            .order_by(WebhookEndpoint.id).with_for_update(key_share=True))).scalars()}
        deliveries = {d.id: d for d in (await s.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.id.in_([o.job.delivery_id for o in outcomes]))
            .order_by(WebhookDelivery.id).with_for_update())).scalars()}
        for outcome in outcomes:
            endpoint = endpoints.get(outcome.job.endpoint_id)
            delivery = deliveries.get(outcome.job.delivery_id)
            if endpoint is None or delivery is None or delivery.status != "pending":
                continue  # deleted meanwhile
            s.add(_apply(rng, endpoint, delivery, outcome))
        for endpoint in endpoints.values():
            if endpoint.enabled and (
                    endpoint.consecutive_failures >= DISABLE_AFTER_FAILED_DELIVERIES):
                _disable(endpoint, outcomes, now)
                emit(s, merchant_id=endpoint.merchant_id, type="webhook_endpoint.disabled",
                     object_type="webhook_endpoint", object_id=endpoint.id,
                     data=endpoint_view(endpoint), now=now)


async def _send(ctx: AppContext, sender: WebhookSender, job: _Claimed,
                slots: asyncio.Semaphore) -> _Outcome:
    async with slots:
        sent_at = ctx.now()
        headers = build_headers(job.secret, job.event_id, int(sent_at.timestamp()), job.body)
        result = await sender.send(job.url, job.body, headers,
                                   allow_private=ctx.settings.webhooks_allow_private,
                                   timeout_s=ctx.settings.webhook_timeout_s)
        return _Outcome(job, sent_at, ctx.now(), result)


def _finished(tasks: set[asyncio.Task[_Outcome]]) -> list[_Outcome]:
    outcomes = []
    for task in tasks:
        if (error := task.exception()) is not None:
            # Unrecorded, its lease brings it back: at-least-once allows sending it again.
            log.error("webhook send failed unexpectedly: %r", error)
        else:
            outcomes.append(task.result())
    return outcomes


async def deliver_due(ctx: AppContext, *, rng: random.Random, sender: WebhookSender | None = None,
                      limit: int = MAX_ATTEMPTS_PER_TICK) -> int:
    """Send what is due until nothing is, or `limit` attempts. Returns attempts made.

    A window of up to WINDOW claimed deliveries is refilled as sends finish, CONCURRENCY
    of them on the wire at once, and results are recorded as they come in: an endpoint
    that times out holds a connection for its timeout, not everyone else's deliveries."""
    own_sender = sender is None
    active = sender or WebhookSender()
    slots = asyncio.Semaphore(CONCURRENCY)
    in_flight: set[asyncio.Task[_Outcome]] = set()
    unrecorded: list[_Outcome] = []
    attempted, drained = 0, False
    try:
        while True:
            free = min(WINDOW - len(in_flight), limit - attempted)
            if not drained and free > 0 and free >= min(REFILL, limit - attempted):
                claimed = await _claim(ctx, free)
                # Fewer due than asked: what becomes due from now on waits for the next tick.
                drained = len(claimed) < free
                attempted += len(claimed)
                in_flight.update(asyncio.create_task(_send(ctx, active, job, slots))
                                 for job in claimed)
            if not in_flight and not unrecorded:
                return attempted
            done: set[asyncio.Task[_Outcome]] = set()
            if in_flight:
                done, in_flight = await asyncio.wait(
                    in_flight, timeout=FLUSH_AFTER_S if unrecorded else None,
                    return_when=asyncio.FIRST_COMPLETED)
                unrecorded += _finished(done)
            # A few results per transaction, but none kept waiting behind a slow send.
            if unrecorded and (len(unrecorded) >= REFILL or not in_flight or not done):
                await _record(ctx, rng, unrecorded)
                unrecorded = []
    finally:
        for task in in_flight:
            task.cancel()  # only on an error or cancellation: the leases bring them back
        if own_sender:
            await active.aclose()


async def dispatch_all(ctx: AppContext, *, batch: int = DISPATCH_BATCH,
                       max_batches: int = MAX_BATCHES) -> int:
    total = 0
    for _ in range(max_batches):
        done = await dispatch_events(ctx, batch=batch)
        total += done
        if done < batch:
            break
    return total
