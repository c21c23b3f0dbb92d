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
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from zpay.metrics import process_metrics
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
PER_ENDPOINT = 4  # of those, to one endpoint: a dead one cannot take every connection
WINDOW = 50  # claimed and not yet sent or recorded, per worker
REFILL = WINDOW // 2  # claim or record this many at a time: fewer, larger transactions
ENDPOINT_SHARE = WINDOW // 2  # of the window, so one endpoint's backlog leaves room
MAX_CLAIMS_PER_REFILL = 4
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


def _full(held: Mapping[str, int], share: int) -> set[str]:
    return {endpoint_id for endpoint_id, n in held.items() if n >= share}


def _lease(ctx: AppContext) -> timedelta:
    # A claimed send may wait for a connection behind its endpoint's whole share.
    waves = math.ceil(ENDPOINT_SHARE / PER_ENDPOINT)
    return timedelta(seconds=waves * ctx.settings.webhook_timeout_s) + LEASE_MARGIN


@dataclass(frozen=True)
class _Claim:
    jobs: list[_Claimed]
    exhausted: bool  # nothing else is due, share limits aside
    capped: set[str]  # endpoints at their share: some of theirs may still be due


async def _claim(ctx: AppContext, batch: int, *, held: Mapping[str, int] | None = None,
                 share: int = WINDOW) -> _Claim:
    """Lease up to `batch` due deliveries, at most `share` per endpoint counting the
    `held` ones."""
    now = ctx.now()
    leased_until = now + _lease(ctx)
    taken = Counter(held or {})
    stmt = (select(WebhookDelivery, WebhookEndpoint, Event)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                   WebhookEndpoint.enabled.is_(True)))
    if full := _full(taken, share):
        stmt = stmt.where(WebhookDelivery.endpoint_id.not_in(full))
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            stmt.order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(batch)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )).all()
        secrets: dict[str, str] = {}
        claimed = []
        for delivery, endpoint, event in rows:
            if taken[endpoint.id] >= share:
                full.add(endpoint.id)
                continue  # left as it is: still due, unlocked at commit
            taken[endpoint.id] += 1
            delivery.next_attempt_at = leased_until
            if endpoint.id not in secrets:
                secrets[endpoint.id] = endpoint_secret(ctx, endpoint)
            claimed.append(_Claimed(delivery.id, endpoint.id, endpoint.url,
                                    secrets[endpoint.id], event.id, payload(event)))
    return _Claim(claimed, exhausted=len(rows) < batch, capped=full)


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
    process_metrics().webhook_attempt(
        result.ok, result.latency_ms,
        (outcome.finished_at - delivery.created_at).total_seconds() if result.ok else None)
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


class _Pump:
    """One tick of sending: a window of claimed deliveries, refilled as sends finish.

    At most CONCURRENCY requests are on the wire, PER_ENDPOINT of them to one endpoint,
    and results are recorded as they come in, a few per transaction: an endpoint that
    times out holds its own few connections for its timeout, not everyone's deliveries.
    """

    def __init__(self, ctx: AppContext, rng: random.Random, sender: WebhookSender,
                 limit: int) -> None:
        self.ctx, self.rng, self.sender, self.limit = ctx, rng, sender, limit
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.endpoint_slots: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(PER_ENDPOINT))
        self.in_flight: dict[asyncio.Task[_Outcome], _Claimed] = {}
        self.per_endpoint: Counter[str] = Counter()
        self.unrecorded: list[_Outcome] = []
        self.attempted = 0
        self.drained = False  # a claim found fewer due than asked: wait for the next tick
        # Endpoints at their share when a claim came up short: more of theirs may be due,
        # so claim again once they are down to half their share.
        self.waiting_for: set[str] = set()

    async def run(self) -> int:
        try:
            while True:
                await self._refill()
                if not self.in_flight and not self.unrecorded:
                    return self.attempted
                await self._collect()
        finally:
            for task in self.in_flight:
                task.cancel()  # only on an error or cancellation: the leases bring them back

    async def _refill(self) -> None:
        # A claim can come back short of the room (an endpoint reached its share), so
        # claim again, a bounded number of times, before waiting for sends to finish.
        for _ in range(MAX_CLAIMS_PER_REFILL):
            room = min(WINDOW - len(self.in_flight), self.limit - self.attempted)
            if (self.drained or self.waiting_for or room <= 0
                    or room < min(REFILL, self.limit - self.attempted)):
                return
            claim = await _claim(self.ctx, room, held=self.per_endpoint,
                                 share=ENDPOINT_SHARE)
            if claim.exhausted:
                if claim.capped:
                    self.waiting_for = claim.capped
                else:
                    self.drained = True
            self.attempted += len(claim.jobs)
            for job in claim.jobs:
                self.in_flight[asyncio.create_task(self._send(job))] = job
                self.per_endpoint[job.endpoint_id] += 1
            if not claim.jobs:
                return

    async def _collect(self) -> None:
        done: set[asyncio.Task[_Outcome]] = set()
        if self.in_flight:
            done, _ = await asyncio.wait(
                self.in_flight, timeout=FLUSH_AFTER_S if self.unrecorded else None,
                return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            job = self.in_flight.pop(task)
            self.per_endpoint[job.endpoint_id] -= 1
            if (job.endpoint_id in self.waiting_for
                    and self.per_endpoint[job.endpoint_id] <= ENDPOINT_SHARE // 2):
                self.waiting_for.clear()
            if (error := task.exception()) is not None:
                # Unrecorded, its lease brings it back: at-least-once allows a resend.
                log.error("webhook send %s failed unexpectedly: %r", job.delivery_id, error)
            else:
                self.unrecorded.append(task.result())
        # Record in groups, but keep no result waiting behind a slow send.
        if self.unrecorded and (len(self.unrecorded) >= REFILL or not self.in_flight
                                or not done):
            await _record(self.ctx, self.rng, self.unrecorded)
            self.unrecorded = []

    async def _send(self, job: _Claimed) -> _Outcome:
        ctx = self.ctx
        # The endpoint's slot first: a send queued behind its own endpoint holds no
        # connection another endpoint could use.
        async with self.endpoint_slots[job.endpoint_id], self.slots:
            sent_at = ctx.now()
            headers = build_headers(job.secret, job.event_id, int(sent_at.timestamp()),
                                    job.body)
            result = await self.sender.send(job.url, job.body, headers,
                                            allow_private=ctx.settings.webhooks_allow_private,
                                            timeout_s=ctx.settings.webhook_timeout_s)
            return _Outcome(job, sent_at, ctx.now(), result)


async def deliver_due(ctx: AppContext, *, rng: random.Random, sender: WebhookSender | None = None,
                      limit: int = MAX_ATTEMPTS_PER_TICK) -> int:
    """Send what is due until nothing is, or `limit` attempts. Returns attempts made."""
    if sender is not None:
        return await _Pump(ctx, rng, sender, limit).run()
    async with WebhookSender() as own:
        return await _Pump(ctx, rng, own, limit).run()


async def dispatch_all(ctx: AppContext, *, batch: int = DISPATCH_BATCH,
                       max_batches: int = MAX_BATCHES) -> int:
    total = 0
    for _ in range(max_batches):
        done = await dispatch_events(ctx, batch=batch)
        total += done
        if done < batch:
            break
    return total
