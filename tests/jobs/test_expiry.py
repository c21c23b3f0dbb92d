"""Expiry and refunds: within one tick, with the signed webhook; refused inline regardless."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
from solders.keypair import Keypair
from sqlalchemy import func, select

from tests.jobs.receivers import Loopback
from tests.jobs.support import Clock
from tests.support import Api, active_key, merchant_api
from zpay.jobs.scheduler import run_once
from zpay.services.context import AppContext
from zpay.store.models import Event, PolicySession, SessionKey
from zpay.webhooks import verify


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def balance(ctx: AppContext, address: str) -> int:
    adapter = ctx.chains.get("solana-local")
    return await adapter.balance(address, adapter.token("USDC"))


async def stored_key(ctx: AppContext, key_id: str) -> SessionKey:
    async with ctx.db.sessions() as s:
        key = await s.get(SessionKey, key_id)
        assert key is not None
        return key


async def count_events(ctx: AppContext, type_: str, object_id: str) -> int:
    async with ctx.db.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(Event).where(
            Event.type == type_, Event.object_id == object_id))).scalar_one())


async def hook(api: Api, url: str, *types: str) -> dict[str, Any]:
    return await api.ok("POST", "/v1/webhook-endpoints",
                        {"url": url, "event_types": list(types) or None}, status=201)


async def test_a_due_key_expires_in_one_tick_and_its_signed_webhook_arrives(
        ctx: AppContext, served: str) -> None:
    ctx.clock = clock = Clock()
    with Loopback() as rx:
        async with httpx.AsyncClient(base_url=served, timeout=30) as http:
            api = await merchant_api(ctx, http)
            endpoint = await hook(api, rx.url(), "session_key.expired")
            _agent, key, _user = await active_key(api, ctx)
            clock.set(at(key["expires_at"]))
            report = await run_once(ctx)
            assert report.expired == 1
            assert (await api.ok("GET", f"/v1/session-keys/{key['id']}"))["status"] == "expired"
            assert (await run_once(ctx)).expired == 0  # idempotent
    [received] = rx.requests
    verify(received.body, received.headers, endpoint["secret"], now=clock.unix)
    body = json.loads(received.body)
    assert (body["type"], body["data"]["id"], body["data"]["status"]) == (
        "session_key.expired", key["id"], "expired")
    assert received.headers["webhook-id"] == body["id"]
    assert await count_events(ctx, "session_key.expired", key["id"]) == 1


async def test_a_payment_after_expiry_is_refused_while_the_scheduler_is_stopped(
        ctx: AppContext, served: str) -> None:
    assert not ctx.settings.scheduler_enabled
    ctx.clock = clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _user = await active_key(api, ctx)
        clock.set(at(key["expires_at"]))
        refused = await api.as_(agent["token"]).pay(key["id"], "1", str(Keypair().pubkey()))
        assert refused.status_code == 402, refused.text
        assert refused.json()["code"] == "session_key_expired"
        assert (await api.ok("GET", f"/v1/session-keys/{key['id']}"))["status"] == "expired"
    # nothing ran the sweep: the row still says active, the refusal came from the inline check
    assert (await stored_key(ctx, key["id"])).status == "active"
    assert await balance(ctx, key["session_key_address"]) == 500 * 10**6


async def test_expiry_refunds_what_is_left_to_the_user(ctx: AppContext, served: str) -> None:
    ctx.clock = clock = Clock()
    merchant_wallet = str(Keypair().pubkey())
    with Loopback() as rx:
        async with httpx.AsyncClient(base_url=served, timeout=30) as http:
            api = await merchant_api(ctx, http)
            await hook(api, rx.url(), "session_key.refunded")
            agent, key, user = await active_key(api, ctx, max_amount="500")
            paid = await api.as_(agent["token"]).pay(key["id"], "120", merchant_wallet)
            assert paid.json()["status"] == "succeeded", paid.text
            user_before = await balance(ctx, user.address)
            clock.set(at(key["expires_at"]))
            report = await run_once(ctx)
            assert (report.expired, report.refunds) == (1, 1)
            status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
            assert (await run_once(ctx)).refunds == 0
    assert (status["status"], status["refund_status"]) == ("expired", "done")
    assert (status["spent_amount"], status["refunded_amount"]) == ("120.000000", "380.000000")
    # books == chain
    assert await balance(ctx, key["session_key_address"]) == 0
    assert await balance(ctx, user.address) - user_before == 380 * 10**6
    assert await balance(ctx, merchant_wallet) == 120 * 10**6
    [received] = rx.requests
    body = json.loads(received.body)
    assert body["type"] == "session_key.refunded"
    assert body["data"]["refund_amount"] == "380.000000"
    assert body["data"]["refund_tx_id"] == (await stored_key(ctx, key["id"])).refund_tx_id


async def test_revoked_keys_are_refunded_and_unfunded_ones_skipped(
        ctx: AppContext, served: str) -> None:
    ctx.clock = clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, funded, user = await active_key(api, ctx, max_amount="40")
        await api.ok("POST", f"/v1/session-keys/{funded['id']}/revoke")
        unfunded = await api.ok("POST", "/v1/session-keys", {
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "5",
            "expires_in_seconds": 60})
        clock.advance(seconds=60)
        report = await run_once(ctx)
    assert (report.expired, report.refunds) == (1, 2)
    revoked = await stored_key(ctx, funded["id"])
    assert (revoked.status, revoked.refund_status, revoked.refunded_amount) == (
        "revoked", "done", 40 * 10**6)
    expired = await stored_key(ctx, unfunded["id"])
    assert (expired.status, expired.refund_status, expired.refunded_amount) == (
        "expired", "skipped", 0)
    assert await balance(ctx, funded["session_key_address"]) == 0


async def test_a_policy_session_expires_once(ctx: AppContext, served: str) -> None:
    ctx.clock = clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        session = await api.ok("POST", "/v1/sessions", {
            "agent_id": agent["id"], "max_per_day": "10", "expires_in_seconds": 60})
        never = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        clock.advance(seconds=59)
        assert (await run_once(ctx)).expired == 0
        clock.advance(seconds=1)
        assert (await run_once(ctx)).expired == 1
        assert (await run_once(ctx)).expired == 0
    async with ctx.db.sessions() as s:
        states = {row.id: row.status for row in (await s.execute(select(PolicySession)))
                  .scalars()}
    assert states == {session["id"]: "expired", never["id"]: "active"}
    assert await count_events(ctx, "session.expired", session["id"]) == 1
