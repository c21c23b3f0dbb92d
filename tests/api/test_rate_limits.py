"""Rate limits: per token, per client address, on refused payment attempts; shared store."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.test_observability import delta, scrape
from tests.support import Api, merchant_api, serve
from zpay.api.app import build_context
from zpay.services.context import AppContext
from zpay.settings import Settings

# 10 s into a 60 s window: every answer in these tests says the window resets in 50 s
FROZEN = datetime.fromtimestamp(60 * 29_000_000 + 10, UTC)


@asynccontextmanager
async def limited(settings: Settings, **limits: object) -> AsyncIterator[AppContext]:
    ctx = await build_context(dataclasses.replace(settings, **limits))  # type: ignore[arg-type]
    ctx.clock = lambda: FROZEN
    try:
        yield ctx
    finally:
        await ctx.chains.close()
        await ctx.db.dispose()


def assert_headers(resp: httpx.Response, limit: int, remaining: int) -> None:
    assert resp.headers["ratelimit-limit"] == str(limit)
    assert resp.headers["ratelimit-remaining"] == str(remaining)
    assert resp.headers["ratelimit-reset"] == "50"
    assert resp.headers["ratelimit-policy"] == f"{limit};w=60"
    assert resp.headers["ratelimit"] == f"limit={limit}, remaining={remaining}, reset=50"


@pytest.mark.parametrize("store", ["memory", "database"])
async def test_a_burst_over_the_token_limit_is_429(settings: Settings, store: str) -> None:
    async with limited(settings, rate_limit_store=store, rate_limit_per_token=5,
                       rate_limit_per_address=1000) as ctx, serve(ctx) as url, \
            httpx.AsyncClient(base_url=url) as http:
        api = await merchant_api(ctx, http)
        other = await merchant_api(ctx, http, "other shop")
        before = await scrape(http)
        for remaining in (4, 3, 2, 1, 0):  # under the limit: nothing refused
            resp = await api.get("/v1/agents")
            assert resp.status_code == 200, resp.text
            assert_headers(resp, 5, remaining)
        over = await api.get("/v1/agents")
        assert over.status_code == 429
        assert over.headers["content-type"].startswith("application/problem+json")
        assert over.headers["retry-after"] == "50"
        assert_headers(over, 5, 0)
        body = over.json()
        assert (body["code"], body["status"], body["limit"]) == ("rate_limited", 429, "token")
        assert body["request_id"] == over.headers["x-request-id"]
        # another token is counted on its own
        assert (await other.get("/v1/agents")).status_code == 200
        after = await scrape(http)
    assert delta(before, after, "zpay_rate_limited_total", limit="token") == 1
    assert delta(before, after, "zpay_http_requests_total", method="GET", route="unmatched",
                 status="429") == 1


async def test_the_address_limit_covers_unauthenticated_requests(settings: Settings) -> None:
    async with limited(settings, rate_limit_store="memory", rate_limit_per_address=3) as ctx, \
            serve(ctx) as url, httpx.AsyncClient(base_url=url) as http:
        for _ in range(10):  # probes and metrics are never limited
            assert (await http.get("/health")).status_code == 200
        for remaining in (2, 1, 0):
            resp = await http.get("/v1/agents", headers={"Authorization": "Bearer nope"})
            assert resp.status_code == 401
            assert_headers(resp, 3, remaining)
        over = await http.get("/v1/agents")
        assert over.status_code == 429 and over.json()["limit"] == "address"
        assert over.headers["retry-after"] == "50"


async def test_refused_payment_attempts_have_their_own_tighter_budget(
        settings: Settings) -> None:
    async with limited(settings, rate_limit_store="database", rate_limit_refusals=2,
                       rate_limit_refusals_window_s=60) as ctx, serve(ctx) as url, \
            httpx.AsyncClient(base_url=url) as http:
        api = await merchant_api(ctx, http)
        thief = api.as_((await api.ok("POST", "/v1/agents", {"name": "stolen"}))["token"])
        honest = api.as_((await api.ok("POST", "/v1/agents", {"name": "honest"}))["token"])
        before = await scrape(http)
        bad = {"session_key_id": "sk_nope", "amount": "1", "recipient": "x"}
        for _ in range(2):
            resp = await thief.post("/v1/payments", bad)
            assert 400 <= resp.status_code < 500 and resp.status_code != 429, resp.text
        blocked = await thief.post("/v1/payments", bad)
        assert blocked.status_code == 429, blocked.text
        assert blocked.json()["code"] == "refusals_rate_limited"
        assert blocked.headers["retry-after"] == "50"
        # reads with that token still work; another agent's attempts are still heard
        assert (await thief.get("/v1/session-keys")).status_code == 200
        resp = await honest.post("/v1/payments", bad)
        assert resp.status_code not in (429, 500), resp.text
        after = await scrape(http)
    assert delta(before, after, "zpay_rate_limited_total", limit="refusals") == 1
    # the blocked attempt never reached the payment service
    assert delta(before, after, "zpay_http_requests_total", method="POST",
                 route="unmatched", status="429") == 1


async def test_replicas_share_the_database_store(settings: Settings) -> None:
    """Two app instances (replicas: each its own limiter and store object) on one database."""
    async with limited(settings, rate_limit_store="database", rate_limit_per_token=4) as ctx, \
            serve(ctx) as url_one, serve(ctx) as url_two, \
            httpx.AsyncClient(base_url=url_one) as http_one, \
            httpx.AsyncClient(base_url=url_two) as http_two:
        one = await merchant_api(ctx, http_one)
        two = Api(http_two, one.token)
        statuses = [(await one.get("/v1/agents")).status_code,
                    (await two.get("/v1/agents")).status_code,
                    (await one.get("/v1/agents")).status_code,
                    (await two.get("/v1/agents")).status_code,
                    (await two.get("/v1/agents")).status_code]
    assert statuses == [200, 200, 200, 200, 429], statuses
