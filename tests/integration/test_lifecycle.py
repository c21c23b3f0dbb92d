"""The full lifecycle over real HTTP, books equal to the chain at every step."""

from __future__ import annotations

import httpx
from solders.keypair import Keypair

from tests.support import active_key, funded_user, merchant_api
from zpay.services.context import AppContext


async def chain_balance(ctx: AppContext, address: str) -> int:
    adapter = ctx.chains.get("solana-local")
    return await adapter.balance(address, adapter.token("USDC"))


async def test_full_lifecycle_over_http(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        assert agent["token"].startswith("agent_test_")
        user = await funded_user(ctx, 100 * 10**6)
        key = await api.ok(
            "POST",
            "/v1/session-keys",
            {
                "agent_id": agent["id"],
                "user_wallet": user.address,
                "max_amount": "30",
                "expires_in_seconds": 3600,
            },
            status=201,
        )
        assert key["status"] == "pending_approval"
        assert key["max_amount"] == "30.000000"
        assert key["approval_transaction"] and key["session_key_address"]
        assert await chain_balance(ctx, key["session_key_address"]) == 0

        status = await api.ok(
            "POST", f"/v1/session-keys/{key['id']}/approval", user.sign_approval(key)
        )
        assert status["status"] == "active"
        assert await chain_balance(ctx, key["session_key_address"]) == 30 * 10**6
        assert await chain_balance(ctx, user.address) == 70 * 10**6

        agent_api = api.as_(agent["token"])
        merchant_wallet = str(Keypair().pubkey())
        for amount in ("12.5", "17.5"):
            resp = await agent_api.pay(key["id"], amount, merchant_wallet)
            assert resp.status_code == 201, resp.text
            assert resp.json()["status"] == "succeeded"

        status = await agent_api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert status["status"] == "exhausted"
        assert (status["spent_amount"], status["remaining_amount"]) == ("30.000000", "0.000000")
        assert status["transaction_count"] == 2
        assert status["security"]["last_activity"] is not None
        # books == chain, exactly
        assert await chain_balance(ctx, key["session_key_address"]) == 0
        assert await chain_balance(ctx, merchant_wallet) == 30 * 10**6

        refused = await agent_api.pay(key["id"], "0.000001", merchant_wallet)
        assert refused.status_code == 402
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "insufficient_session_balance"

        # a top-up with its own approval makes the exhausted key active again
        top_up = await api.ok("POST", f"/v1/session-keys/{key['id']}/top-ups", {"amount": "5"})
        status = await api.ok(
            "POST",
            f"/v1/session-keys/{key['id']}/top-ups/{top_up['id']}/approval",
            user.sign_approval(top_up),
        )
        assert status["status"] == "active"
        assert (status["funded_amount"], status["spent_amount"], status["remaining_amount"]) == (
            "35.000000",
            "30.000000",
            "5.000000",
        )
        assert await chain_balance(ctx, key["session_key_address"]) == 5 * 10**6

        attempts = await api.ok("GET", f"/v1/session-keys/{key['id']}/attempts")
        reasons = [a["reason"] for a in attempts["data"]]
        assert reasons == ["insufficient_session_balance", "approved", "approved"]

        events = await api.ok("GET", "/v1/events", object_id=key["id"])
        types = {e["type"] for e in events["data"]}
        assert {
            "session_key.created",
            "session_key.activated",
            "session_key.exhausted",
            "session_key.topped_up",
        } <= types

        listing = await api.ok("GET", "/v1/session-keys", limit=1)
        assert listing["data"][0]["id"] == key["id"] and listing["has_more"] is False

        revoked = await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
        assert revoked["status"] == "revoked"
        again = await agent_api.pay(key["id"], "1", merchant_wallet)
        assert again.json()["code"] == "session_key_revoked"


async def test_linked_policy_example(ctx: AppContext, served: str) -> None:
    """DESIGN.md: 500 funded, 25 per transaction, 100 per day."""
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        session = await api.ok(
            "POST",
            "/v1/sessions",
            {"agent_id": agent["id"], "max_per_transaction": "25", "max_per_day": "100"},
        )
        assert session["access_token"].startswith("as_test_")
        assert session["token"] == "USDC"
        _, key, _ = await active_key(
            api, ctx, max_amount="500", agent=agent, session_id=session["id"]
        )
        agent_api = api.as_(agent["token"])
        to = str(Keypair().pubkey())

        resp = await agent_api.pay(key["id"], "500", to)
        assert (resp.status_code, resp.json()["code"]) == (402, "per_transaction_limit")
        resp = await agent_api.pay(key["id"], "50", to)
        assert resp.json()["code"] == "per_transaction_limit"
        for _ in range(4):
            assert (await agent_api.pay(key["id"], "25", to)).status_code == 201
        resp = await agent_api.pay(key["id"], "25", to)
        assert (resp.status_code, resp.json()["code"]) == (402, "daily_limit")

        check = await agent_api.ok("GET", f"/v1/session-keys/{key['id']}/can-afford", amount="1")
        assert check["allowed"] is False and check["reason"] == "daily_limit"
        assert check["session_key_remaining"] == "400.000000"
        assert check["session_remaining_today"] == "0.000000"
        assert check["effective_limit"] == "0.000000"

        status = await api.ok("GET", f"/v1/sessions/{session['id']}")
        assert status["windows"]["mode"] == "rolling"
        assert status["windows"]["day"]["used"] == "100.000000"
        assert status["windows"]["day"]["frees_up_at"] is not None
        assert status["linked_session_key_ids"] == [key["id"]]

        # after unlink only the balance applies
        await api.ok("DELETE", f"/v1/session-keys/{key['id']}/link")
        resp = await agent_api.pay(key["id"], "300", to)
        assert resp.status_code == 201, resp.text
        resp = await agent_api.pay(key["id"], "100.000001", to)
        assert resp.json()["code"] == "insufficient_session_balance"
        assert (await agent_api.pay(key["id"], "100", to)).status_code == 201
        assert await chain_balance(ctx, key["session_key_address"]) == 0
        assert await chain_balance(ctx, to) == 500 * 10**6


async def test_design_example_as_written(ctx: AppContext, served: str) -> None:
    """The DESIGN.md sentence "two 50 payments pass, the third is refused (daily_limit)" only
    holds with a per-transaction limit of at least 50; with 50 it holds exactly."""
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        session = await api.ok(
            "POST",
            "/v1/sessions",
            {"agent_id": agent["id"], "max_per_transaction": "50", "max_per_day": "100"},
        )
        _, key, _ = await active_key(api, ctx, agent=agent, session_id=session["id"])
        to = str(Keypair().pubkey())
        agent_api = api.as_(agent["token"])
        assert (await agent_api.pay(key["id"], "500", to)).json()["code"] == (
            "per_transaction_limit"
        )
        assert (await agent_api.pay(key["id"], "50", to)).status_code == 201
        assert (await agent_api.pay(key["id"], "50", to)).status_code == 201
        assert (await agent_api.pay(key["id"], "50", to)).json()["code"] == "daily_limit"


async def test_session_limits_count_every_linked_key(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        session = await api.ok(
            "POST", "/v1/sessions", {"agent_id": agent["id"], "max_per_day": "10"}
        )
        _, k1, _ = await active_key(
            api, ctx, max_amount="10", agent=agent, session_id=session["id"]
        )
        _, k2, _ = await active_key(api, ctx, max_amount="10", agent=agent)
        await api.ok("POST", f"/v1/session-keys/{k2['id']}/link", {"session_id": session["id"]})
        to = str(Keypair().pubkey())
        assert (await api.pay(k1["id"], "6", to)).status_code == 201
        resp = await api.pay(k2["id"], "5", to)
        assert resp.json()["code"] == "daily_limit"
        assert (await api.pay(k2["id"], "4", to)).status_code == 201
