"""The audit as a scheduled job: round-robin in bounded batches, its own interval, and
`run_once` carries a difference to its webhook in one tick."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from apscheduler.triggers.interval import IntervalTrigger
from solders.keypair import Keypair

from tests.jobs.receivers import Loopback
from tests.jobs.support import Clock
from tests.services.test_audit import faucet_into, finding
from tests.support import Api, active_key, merchant_api
from zpay.jobs.audit import run_audit
from zpay.jobs.scheduler import run_once, start_scheduler
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.webhooks import verify

USDC = 10**6


@pytest.fixture
async def api(ctx: AppContext, served: str) -> AsyncIterator[Api]:
    ctx.clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        yield await merchant_api(ctx, http)


async def test_the_job_visits_wallets_round_robin_in_bounded_batches(
    ctx: AppContext, api: Api
) -> None:
    clock = ctx.clock
    assert isinstance(clock, Clock)
    agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
    keys = [(await active_key(api, ctx, max_amount="5", agent=agent))[1]["id"] for _ in range(3)]
    await api.ok(
        "POST",
        "/v1/session-keys",
        {  # never funded: not audited
            "agent_id": agent["id"],
            "user_wallet": str(Keypair().pubkey()),
            "max_amount": "5",
            "expires_in_seconds": 3600,
        },
    )
    assert await run_audit(ctx, batch=2, max_batches=1) == 2
    assert await run_audit(ctx, batch=2, max_batches=1) == 1  # the one not seen yet
    assert await run_audit(ctx, batch=2, max_batches=1) == 0  # none due again yet
    first = clock.now
    clock.advance(seconds=ctx.settings.audit_interval_s)
    assert await run_audit(ctx, batch=2, max_batches=1) == 2  # the two seen longest ago
    checked = [(await finding(ctx, k)).checked_at for k in keys]
    assert sorted(c.timestamp() for c in checked if c) == [
        first.timestamp(),
        clock.now.timestamp(),
        clock.now.timestamp(),
    ]
    assert await run_audit(ctx, batch=2, max_batches=5) == 1


async def test_run_once_carries_a_difference_to_its_webhook(ctx: AppContext, api: Api) -> None:
    clock = ctx.clock
    assert isinstance(clock, Clock)
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    with Loopback() as rx:
        endpoint = await api.ok(
            "POST",
            "/v1/webhook-endpoints",
            {"url": rx.url(), "event_types": ["audit.mismatch", "audit.resolved"]},
            status=201,
        )
        report = await run_once(ctx)
        assert (report.audited, report.delivered) == (1, 0)  # consistent: nothing to say
        await faucet_into(ctx, key["session_key_address"], 800 * USDC)
        clock.advance(seconds=ctx.settings.audit_interval_s)
        report = await run_once(ctx)
        assert (report.audited, report.delivered) == (1, 1)
        clock.advance(seconds=ctx.settings.audit_interval_s)
        assert (await run_once(ctx)).delivered == 0  # the same difference: said once
    [received] = rx.requests
    verify(received.body, received.headers, endpoint["secret"], now=clock.unix)
    body = json.loads(received.body)
    assert body["type"] == "audit.mismatch"
    assert (body["data"]["session_key_id"], body["data"]["difference"]) == (key["id"], "800.000000")


async def test_the_audit_has_its_own_interval(ctx: AppContext) -> None:
    assert Settings().audit_interval_s == 60
    assert Settings.from_env({"ZPAY_AUDIT_INTERVAL_S": "300"}).audit_interval_s == 300
    ctx.settings = dataclasses.replace(
        ctx.settings, scheduler_interval_s=1.0, audit_interval_s=90.0
    )
    scheduler = start_scheduler(ctx)
    try:
        intervals = {}
        for job in scheduler.get_jobs():
            assert isinstance(job.trigger, IntervalTrigger)
            intervals[job.id] = job.trigger.interval
    finally:
        await scheduler.stop()
    assert intervals["audit"] == timedelta(seconds=90)
    assert intervals["expire"] == intervals["webhooks"] == timedelta(seconds=1)
