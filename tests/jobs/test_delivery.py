"""Outbox fan-out and signed at-least-once delivery, against a real loopback receiver."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from datetime import datetime

from sqlalchemy import func, select

from tests.jobs.receivers import Loopback, Scripted, bodies, ids
from tests.jobs.support import Clock, endpoint, events, merchant
from tests.webhooks.receiver import Reply
from zpay.jobs import delivery
from zpay.jobs.delivery import DISABLE_AFTER_FAILED_DELIVERIES, deliver_due, dispatch_all
from zpay.jobs.scheduler import run_once
from zpay.services import webhooks
from zpay.services.context import AppContext
from zpay.services.pagination import Page
from zpay.store.models import Event, WebhookDelivery, WebhookEndpoint
from zpay.webhooks import verify
from zpay.webhooks.retry import MAX_ATTEMPTS, RETRY_DELAYS, retry_delay


async def _delivery(ctx: AppContext, event_id: str) -> WebhookDelivery:
    async with ctx.db.sessions() as s:
        return (await s.execute(select(WebhookDelivery).where(
            WebhookDelivery.event_id == event_id))).scalar_one()


async def _next_due(ctx: AppContext) -> datetime | None:
    async with ctx.db.sessions() as s:
        return (await s.execute(select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == "pending"))).scalar()


async def test_three_500s_then_200_is_four_attempts_on_the_documented_schedule(
        ctx: AppContext) -> None:
    ctx.clock = clock = Clock()
    principal = await merchant(ctx)
    with Scripted(500, 500, 500, 200) as rx:
        ep = await endpoint(ctx, principal, rx.url())
        [event_id] = await events(ctx, principal)
        rng, expected = random.Random(42), random.Random(42)
        for attempt in (1, 2, 3):
            report = await run_once(ctx, rng=rng)
            assert report.delivered == 1
            row = await _delivery(ctx, event_id)
            assert (row.status, row.attempt_count, row.last_status_code) == (
                "pending", attempt, 500)
            delay = retry_delay(attempt, expected)
            assert delay is not None
            assert row.next_attempt_at == clock.now + delay
            # the documented schedule, jitter within ±10 %
            assert 0.9 * RETRY_DELAYS[attempt - 1] <= delay <= 1.1 * RETRY_DELAYS[attempt - 1]
            clock.set(row.next_attempt_at - (row.next_attempt_at - clock.now) / 100)
            assert (await run_once(ctx, rng=rng)).delivered == 0  # not due yet
            clock.set(row.next_attempt_at)
        assert (await run_once(ctx, rng=rng)).delivered == 1
        assert (await run_once(ctx, rng=rng)).delivered == 0

    row = await _delivery(ctx, event_id)
    assert (row.status, row.attempt_count, row.next_attempt_at) == ("succeeded", 4, None)
    log = await webhooks.list_deliveries(ctx, principal, ep["id"], Page())
    [entry] = log["data"]
    assert [a["status_code"] for a in entry["attempts"]] == [500, 500, 500, 200]
    assert [a["attempt"] for a in entry["attempts"]] == [1, 2, 3, 4]
    assert all(a["latency_ms"] >= 0 for a in entry["attempts"])
    assert entry["event_type"] == "session.created"
    # every attempt: the same webhook-id and body, each signature valid at its own time
    assert ids(rx) == {event_id: 4}
    assert len({r.body for r in rx.requests}) == 1
    for received in rx.requests:
        verify(received.body, received.headers, ep["secret"],
               now=int(received.headers["webhook-timestamp"]))
    assert bodies(rx)[0] == {"id": event_id, "type": "session.created",
                             "created_at": bodies(rx)[0]["created_at"], "data": {"n": 0}}


async def test_an_endpoint_failing_every_retry_is_disabled_with_an_event(
        ctx: AppContext) -> None:
    ctx.clock = clock = Clock()
    principal = await merchant(ctx)
    with Loopback(Reply(status=503)) as rx, Loopback() as other:
        ep = await endpoint(ctx, principal, rx.url())
        watcher = await endpoint(ctx, principal, other.url(),
                                 event_types=["webhook_endpoint.disabled"])
        await events(ctx, principal, DISABLE_AFTER_FAILED_DELIVERIES)
        rng = random.Random(1)
        for _ in range(DISABLE_AFTER_FAILED_DELIVERIES * MAX_ATTEMPTS + 1):
            await run_once(ctx, rng=rng)
            due = await _next_due(ctx)
            if due is None:
                break
            clock.set(max(due, clock.now))
        assert len(rx.requests) == DISABLE_AFTER_FAILED_DELIVERIES * MAX_ATTEMPTS
        await run_once(ctx, rng=rng)
        [notice] = bodies(other)

    state = await webhooks.get_endpoint(ctx, principal, ep["id"])
    assert state["enabled"] is False
    assert "5 deliveries in a row failed" in state["disabled_reason"]
    assert "HTTP 503" in state["disabled_reason"]
    assert notice["type"] == "webhook_endpoint.disabled"
    assert notice["data"]["id"] == ep["id"]
    assert (await webhooks.get_endpoint(ctx, principal, watcher["id"]))["enabled"] is True
    # a disabled endpoint gets no new deliveries; re-enabling starts counting afresh
    await events(ctx, principal)
    await run_once(ctx, rng=rng)
    async with ctx.db.sessions() as s:
        count = (await s.execute(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == ep["id"]))).scalar_one()
        assert count == DISABLE_AFTER_FAILED_DELIVERIES
    enabled = await webhooks.update_endpoint(ctx, principal, ep["id"], {"enabled": True})
    assert (enabled["enabled"], enabled["disabled_reason"]) == (True, None)
    async with ctx.db.sessions() as s:
        row = await s.get(WebhookEndpoint, ep["id"])
        assert row is not None and row.consecutive_failures == 0


async def test_a_success_resets_the_failure_count(ctx: AppContext) -> None:
    ctx.clock = clock = Clock()
    principal = await merchant(ctx)
    statuses = [500] * (MAX_ATTEMPTS * (DISABLE_AFTER_FAILED_DELIVERIES - 1)) + [200]
    with Scripted(*statuses) as rx:
        ep = await endpoint(ctx, principal, rx.url())
        rng = random.Random(3)
        for _ in range(DISABLE_AFTER_FAILED_DELIVERIES - 1):
            await events(ctx, principal)
            for _ in range(MAX_ATTEMPTS):
                await run_once(ctx, rng=rng)
                clock.set(await _next_due(ctx) or clock.now)
        async with ctx.db.sessions() as s:
            row = await s.get(WebhookEndpoint, ep["id"])
            assert row is not None
            assert row.consecutive_failures == DISABLE_AFTER_FAILED_DELIVERIES - 1
        await events(ctx, principal)
        await run_once(ctx, rng=rng)
        assert len(rx.requests) == len(statuses)
    async with ctx.db.sessions() as s:
        row = await s.get(WebhookEndpoint, ep["id"])
        assert row is not None and (row.enabled, row.consecutive_failures) == (True, 0)


async def test_redelivery_keeps_the_webhook_id(ctx: AppContext) -> None:
    ctx.clock = Clock()
    principal = await merchant(ctx)
    with Loopback() as rx:
        ep = await endpoint(ctx, principal, rx.url())
        [event_id] = await events(ctx, principal)
        await run_once(ctx)
        delivery_id = (await _delivery(ctx, event_id)).id
        queued = await webhooks.redeliver(ctx, principal, delivery_id)
        assert (queued["status"], queued["attempt_count"]) == ("pending", 1)
        await run_once(ctx)
    assert ids(rx) == {event_id: 2}
    body = await webhooks.get_delivery(ctx, principal, delivery_id)
    assert (body["status"], body["attempt_count"], body["endpoint_id"]) == (
        "succeeded", 2, ep["id"])
    assert [a["status_code"] for a in body["attempts"]] == [200, 200]


async def test_filters_and_disabled_endpoints(ctx: AppContext) -> None:
    ctx.clock = Clock()
    principal = await merchant(ctx)
    stranger = await merchant(ctx, "other shop")
    with Loopback() as everything, Loopback() as payments, Loopback() as off, \
            Loopback() as theirs:
        await endpoint(ctx, principal, everything.url())
        await endpoint(ctx, principal, payments.url(), event_types=["payment.succeeded"])
        disabled = await endpoint(ctx, principal, off.url())
        await webhooks.update_endpoint(ctx, principal, disabled["id"], {"enabled": False})
        await endpoint(ctx, stranger, theirs.url())
        [created] = await events(ctx, principal)
        [paid] = await events(ctx, principal, type_="payment.succeeded")
        report = await run_once(ctx)
        assert (report.dispatched, report.delivered) == (2, 3)
    assert ids(everything) == {created: 1, paid: 1}
    assert ids(payments) == {paid: 1}
    assert not off.requests and not theirs.requests
    async with ctx.db.sessions() as s:
        left = (await s.execute(select(func.count()).select_from(Event).where(
            Event.dispatched.is_(False)))).scalar_one()
    assert left == 0


async def test_concurrent_sweeps_send_each_delivery_once(ctx: AppContext) -> None:
    principal = await merchant(ctx)
    with Loopback() as rx:
        await endpoint(ctx, principal, rx.url())
        sent = await events(ctx, principal, 120)
        await asyncio.gather(*(dispatch_all(ctx, batch=25) for _ in range(3)))
        rng = random.Random()
        counts = await asyncio.gather(*(deliver_due(ctx, rng=rng) for _ in range(3)))
    assert sum(counts) == 120
    assert ids(rx) == {event_id: 1 for event_id in sent}


async def test_a_crashed_claim_is_sent_after_its_lease(ctx: AppContext) -> None:
    ctx.clock = clock = Clock()
    principal = await merchant(ctx)
    with Loopback() as rx:
        await endpoint(ctx, principal, rx.url())
        [event_id] = await events(ctx, principal)
        await dispatch_all(ctx)
        [claimed] = (await delivery._claim(ctx, 10)).jobs  # …and the worker dies before sending
        assert (await run_once(ctx)).delivered == 0
        clock.advance(seconds=delivery._lease(ctx).total_seconds())
        assert (await run_once(ctx)).delivered == 1
    assert claimed.event_id == event_id
    assert ids(rx) == {event_id: 1}


async def test_the_address_is_checked_again_at_send_time(ctx: AppContext) -> None:
    ctx.clock = Clock()
    principal = await merchant(ctx)
    with Loopback() as rx:
        ep = await endpoint(ctx, principal, rx.url())  # allowed while the opt-in was on
        [event_id] = await events(ctx, principal)
        ctx.settings = dataclasses.replace(ctx.settings, webhooks_allow_private=False)
        await run_once(ctx)
    assert not rx.requests
    [entry] = (await webhooks.list_deliveries(ctx, principal, ep["id"], Page()))["data"]
    [attempt] = entry["attempts"]
    assert attempt["status_code"] is None and "loopback" in attempt["error"]
    assert (entry["status"], entry["event_id"]) == ("pending", event_id)
    assert json.dumps(entry)  # the log is plain JSON


async def test_a_slow_endpoint_does_not_hold_back_the_others(ctx: AppContext) -> None:
    # The slow endpoint answers nothing for the whole test: whatever the machine's load,
    # the fast deliveries can only all succeed if the slow ones do not hold them back.
    ctx.settings = dataclasses.replace(ctx.settings, webhook_timeout_s=120.0)
    principal, other = await merchant(ctx), await merchant(ctx, "other shop")
    # a backlog larger than a worker's whole window, older than everything else
    slow_count, fast_count = delivery.WINDOW + 10, 3 * delivery.CONCURRENCY
    with Loopback(Reply(delay_s=120)) as slow, Loopback() as fast:
        await endpoint(ctx, principal, slow.url())
        await endpoint(ctx, other, fast.url())
        await events(ctx, principal, slow_count)
        await events(ctx, other, fast_count)
        await dispatch_all(ctx)
        started = time.monotonic()
        sending = asyncio.create_task(deliver_due(ctx, rng=random.Random()))
        try:
            # every fast delivery is sent and recorded while the slow ones hang
            while await _count(ctx, "succeeded") < fast_count:
                assert time.monotonic() - started < 60, "held back by the slow endpoint"
                await asyncio.sleep(0.01)
            assert await _count(ctx, "pending") == slow_count  # none of them answered
            assert len(slow.requests) == delivery.PER_ENDPOINT  # connections it may hold
        finally:
            sending.cancel()  # as a worker stopping: the leases bring the rest back
            with contextlib.suppress(asyncio.CancelledError):
                await sending
    assert ids(fast) == {i: 1 for i in ids(fast)} and len(ids(fast)) == fast_count
    assert await _count(ctx, "pending") == slow_count


async def _count(ctx: AppContext, status: str) -> int:
    async with ctx.db.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.status == status))).scalar_one())
