"""The webhooks API over real HTTP: endpoints CRUD, URL safety, tenancy, log and redelivery."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.jobs.receivers import Loopback, ids
from tests.support import Api, merchant_api
from zpay.jobs.scheduler import run_once
from zpay.services.context import AppContext
from zpay.services.webhooks import MAX_ENDPOINTS_PER_MERCHANT
from zpay.webhooks import verify

BASE = "/v1/webhook-endpoints"
HOOK = "http://127.0.0.1:9/hook"  # nothing listens there; creation does not connect


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        yield client


async def patch(api: Api, path: str, body: object) -> httpx.Response:
    return await api.http.patch(path, json=body, headers={"Authorization": f"Bearer {api.token}"})


def problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == code, resp.text


async def test_endpoint_crud(ctx: AppContext, http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    created = await api.ok("POST", BASE, {"url": HOOK, "description": "orders",
                                          "event_types": ["payment.succeeded"]}, status=201)
    assert created["secret"].startswith("whsec_")
    assert (created["url"], created["enabled"], created["event_types"]) == (
        HOOK, True, ["payment.succeeded"])
    read = await api.ok("GET", f"{BASE}/{created['id']}")
    assert "secret" not in read  # shown once
    assert read == {k: v for k, v in created.items() if k != "secret"}
    listing = await api.ok("GET", BASE)
    assert [e["id"] for e in listing["data"]] == [created["id"]]
    assert all("secret" not in e for e in listing["data"])

    path = f"{BASE}/{created['id']}"
    resp = await patch(api, path, {"event_types": None, "enabled": False})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["event_types"], body["enabled"], body["description"]) == (None, False, "orders")
    assert body["disabled_reason"] == "disabled by the merchant"
    body = (await patch(api, path, {"enabled": True, "description": None})).json()
    assert (body["enabled"], body["disabled_reason"], body["description"]) == (True, None, None)
    problem(await patch(api, path, {"secret": "whsec_x"}), 422, "invalid_request")

    deleted = await api.ok("DELETE", path)
    assert (deleted["id"], deleted["deleted"]) == (created["id"], True)
    problem(await api.get(path), 404, "webhook_endpoint_not_found")
    assert (await api.ok("GET", BASE))["data"] == []


async def test_event_type_filter_is_validated(ctx: AppContext, http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    problem(await api.post(BASE, {"url": HOOK, "event_types": ["payment.refunded"]}),
            422, "unknown_event_type")
    problem(await api.post(BASE, {"url": HOOK, "event_types": []}), 422, "invalid_event_types")
    problem(await api.post(BASE, {"url": "ftp://example.com/hook"}), 422,
            "webhook_url_not_allowed")
    created = await api.ok("POST", BASE, {"url": HOOK, "event_types": [
        "session_key.expired", "session_key.expired", "webhook_endpoint.disabled"]})
    assert created["event_types"] == ["session_key.expired", "webhook_endpoint.disabled"]
    problem(await patch(api, f"{BASE}/{created['id']}", {"event_types": ["nope"]}), 422,
            "unknown_event_type")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook",
    "http://10.0.0.8/hook", "http://169.254.169.254/latest/meta-data",
    "http://2130706433/hook", "http://0x7f000001/hook", "http://0177.0.0.1/hook",
    "http://0.0.0.0/hook",
])
async def test_private_urls_are_refused_without_the_opt_in(
        ctx: AppContext, http: httpx.AsyncClient, url: str) -> None:
    api = await merchant_api(ctx, http)
    allowed = await api.ok("POST", BASE, {"url": HOOK}, status=201)  # the tests' opt-in
    ctx.settings = dataclasses.replace(ctx.settings, webhooks_allow_private=False)
    problem(await api.post(BASE, {"url": url}), 422, "webhook_url_not_allowed")
    problem(await patch(api, f"{BASE}/{allowed['id']}", {"url": url}), 422,
            "webhook_url_not_allowed")
    assert len((await api.ok("GET", BASE))["data"]) == 1


async def test_another_merchants_webhooks_are_404(ctx: AppContext,
                                                  http: httpx.AsyncClient) -> None:
    owner, stranger = await merchant_api(ctx, http, "owner"), await merchant_api(ctx, http, "b")
    with Loopback() as rx:
        endpoint = await owner.ok("POST", BASE, {"url": rx.url()})
        await owner.ok("POST", "/v1/agents", {"name": "a"})
        agent = await owner.ok("POST", "/v1/agents", {"name": "b"})
        await owner.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        await run_once(ctx)
    path = f"{BASE}/{endpoint['id']}"
    delivery = (await owner.ok("GET", f"{path}/deliveries"))["data"][0]
    for resp in (await stranger.get(path), await patch(stranger, path, {"enabled": False}),
                 await stranger.delete(path), await stranger.get(f"{path}/deliveries")):
        problem(resp, 404, "webhook_endpoint_not_found")
    for resp in (await stranger.get(f"/v1/webhook-deliveries/{delivery['id']}"),
                 await stranger.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")):
        problem(resp, 404, "webhook_delivery_not_found")
    assert (await stranger.ok("GET", BASE))["data"] == []
    assert (await owner.ok("GET", path))["enabled"] is True
    # agents never manage webhooks
    problem(await owner.as_(agent["token"]).get(BASE), 403, "merchant_key_required")


async def test_delivery_log_and_redelivery(ctx: AppContext, http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    with Loopback() as rx:
        endpoint = await api.ok("POST", BASE, {"url": rx.url(),
                                               "event_types": ["session.created"]})
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        session = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        await run_once(ctx)
        log = await api.ok("GET", f"{BASE}/{endpoint['id']}/deliveries")
        [delivery] = log["data"]
        assert (delivery["status"], delivery["event_type"], delivery["attempt_count"]) == (
            "succeeded", "session.created", 1)
        [attempt] = delivery["attempts"]
        assert attempt["status_code"] == 200 and attempt["latency_ms"] >= 0
        assert attempt["error"] is None

        redo = f"/v1/webhook-deliveries/{delivery['id']}/redeliver"
        queued = await api.ok("POST", redo, status=202)
        assert queued["status"] == "pending"
        await run_once(ctx)
        again = await api.ok("GET", f"/v1/webhook-deliveries/{delivery['id']}")
        assert [a["attempt"] for a in again["attempts"]] == [1, 2]
        failed = await api.get(f"{BASE}/{endpoint['id']}/deliveries", status="failed")
        assert failed.json()["data"] == []
        problem(await api.get(f"{BASE}/{endpoint['id']}/deliveries", status="odd"), 422,
                "invalid_status")

        await patch(api, f"{BASE}/{endpoint['id']}", {"enabled": False})
        problem(await api.post(redo), 409, "webhook_endpoint_disabled")
    [event_id] = ids(rx)
    assert ids(rx)[event_id] == 2
    for received in rx.requests:
        verify(received.body, received.headers, endpoint["secret"])
        assert session["id"].encode() in received.body
    events = await api.ok("GET", "/v1/events", type="session.created")
    assert [e["id"] for e in events["data"]] == [event_id]


async def test_endpoints_per_merchant_are_capped(ctx: AppContext,
                                                 http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    for _ in range(MAX_ENDPOINTS_PER_MERCHANT):
        await api.ok("POST", BASE, {"url": HOOK})
    problem(await api.post(BASE, {"url": HOOK}), 409, "too_many_webhook_endpoints")
