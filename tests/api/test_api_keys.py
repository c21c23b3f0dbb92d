"""Merchant secret keys (create, list by hint, revoke, roll with overlap) and agent token
expiry, over HTTP on both databases."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.support import Api, merchant_api
from zpay.services.context import AppContext


async def test_create_list_revoke_roll(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        first = await merchant_api(ctx, http)
        other_merchant = await merchant_api(ctx, http, "other")
        created = await first.ok("POST", "/v1/api-keys", {"name": "ci"}, status=201)
        secret = created["secret"]
        assert secret.startswith("sk_test_") and created["status"] == "active"
        assert created["hint"] == f"sk_test_…{secret[-4:]}" and created["name"] == "ci"
        second = Api(http, secret)
        assert (await second.get("/v1/agents")).status_code == 200

        listed = (await second.ok("GET", "/v1/api-keys"))["data"]
        assert {k["id"] for k in listed} >= {created["id"]} and len(listed) == 2
        assert all("secret" not in k for k in listed)
        assert first.token not in str(listed) and secret not in str(listed)
        # another merchant's key is a 404, as an unknown one
        for api in (other_merchant,):
            resp = await api.post(f"/v1/api-keys/{created['id']}/revoke")
            assert resp.status_code == 404 and resp.json()["code"] == "api_key_not_found"
        # an agent token cannot manage keys
        agent = await first.ok("POST", "/v1/agents", {"name": "bot"})
        resp = await first.as_(agent["token"]).get("/v1/api-keys")
        assert resp.status_code == 403

        # revoke: refused on the very next call
        revoked = await second.ok("POST", f"/v1/api-keys/{created['id']}/revoke")
        assert revoked["status"] == "revoked" and revoked["revoked_at"]
        resp = await second.get("/v1/agents")
        assert resp.status_code == 401 and resp.json()["code"] == "invalid_credentials"

        # the last usable key cannot be revoked
        keys = (await first.ok("GET", "/v1/api-keys"))["data"]
        mine = next(k for k in keys if k["status"] == "active")
        resp = await first.post(f"/v1/api-keys/{mine['id']}/revoke")
        assert resp.status_code == 409 and resp.json()["code"] == "last_api_key"

        # roll with an overlap: both work until the old one's expires_at
        rolled = await first.ok("POST", f"/v1/api-keys/{mine['id']}/roll",
                                {"overlap_seconds": 3600}, status=201)
        new = Api(http, rolled["secret"])
        assert rolled["rolled_from"]["id"] == mine["id"]
        assert rolled["rolled_from"]["expires_at"] is not None
        assert (await first.get("/v1/agents")).status_code == 200
        assert (await new.get("/v1/agents")).status_code == 200
        later = ctx.now() + timedelta(seconds=3601)
        ctx.clock = lambda: later
        resp = await first.get("/v1/agents")
        assert resp.status_code == 401 and resp.json()["code"] == "token_expired"
        assert (await new.get("/v1/agents")).status_code == 200
        old = await new.ok("GET", f"/v1/api-keys/{mine['id']}")
        assert old["status"] == "expired"

        # roll with no overlap: the old key is revoked at once
        keys = (await new.ok("GET", "/v1/api-keys"))["data"]
        current = next(k for k in keys if k["status"] == "active")
        again = await new.ok("POST", f"/v1/api-keys/{current['id']}/roll",
                             {"overlap_seconds": 0}, status=201)
        assert (await new.get("/v1/agents")).status_code == 401
        assert (await Api(http, again["secret"]).get("/v1/agents")).status_code == 200
        resp = await Api(http, again["secret"]).post(f"/v1/api-keys/{current['id']}/roll")
        assert resp.status_code == 409 and resp.json()["code"] == "api_key_not_active"
        resp = await Api(http, again["secret"]).post(
            f"/v1/api-keys/{current['id']}/roll", {"overlap_seconds": 10**9})
        assert resp.status_code == 422


async def test_agent_tokens_can_expire(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "bot", "expires_in_seconds": 600},
                             status=201)
        assert agent["token_expires_at"] is not None
        forever = await api.ok("POST", "/v1/agents", {"name": "forever"}, status=201)
        assert forever["token_expires_at"] is None
        bot = api.as_(agent["token"])
        assert (await bot.get(f"/v1/agents/{agent['id']}")).status_code == 200
        start = ctx.now()
        ctx.clock = lambda: start + timedelta(seconds=601)
        resp = await bot.get(f"/v1/agents/{agent['id']}")
        assert resp.status_code == 401 and resp.json()["code"] == "token_expired"
        assert (await api.as_(forever["token"]).get(
            f"/v1/agents/{forever['id']}")).status_code == 200
        # rotation gives a new token with its own lifetime (or none)
        rotated = await api.ok("POST", f"/v1/agents/{agent['id']}/rotate-token",
                               {"expires_in_seconds": 60})
        assert (await api.as_(rotated["token"]).get(
            f"/v1/agents/{agent['id']}")).status_code == 200
        plain = await api.ok("POST", f"/v1/agents/{agent['id']}/rotate-token")
        assert plain["token_expires_at"] is None
        for bad in (0, 59, 10**9):
            resp = await api.post("/v1/agents", {"name": "x", "expires_in_seconds": bad})
            assert resp.status_code == 422 and resp.json()["code"] == "invalid_expiry"


async def test_the_sdk_manages_keys_and_expiring_agent_tokens(ctx: AppContext,
                                                              served: str) -> None:
    from zpay.client import AsyncZpay, AuthenticationError, Conflict
    from zpay.services.merchants import create_merchant

    secret = (await create_merchant(ctx, "sdk shop")).api_key
    async with AsyncZpay(secret, base_url=served) as z:
        created = await z.api_keys.create(name="deploy")
        assert created.secret and created.status == "active" and created.name == "deploy"
        listed = [k async for k in z.api_keys.list()]
        assert {k.id for k in listed} == {created.id, next(
            k.id for k in listed if k.id != created.id)}
        assert all(k.secret is None and k.hint.startswith("sk_test_…") for k in listed)
        rolled = await z.api_keys.roll(created.id, overlap_seconds=0)
        assert rolled.secret and rolled.id != created.id
        assert (await z.api_keys.get(created.id)).status == "revoked"
        async with AsyncZpay(created.secret, base_url=served) as old:
            with pytest.raises(AuthenticationError):
                await old.agents.list().first_page()
        revoked = await z.api_keys.revoke(rolled.id)
        assert revoked.status == "revoked" and revoked.revoked_at is not None
        mine = next(k for k in listed if k.id != created.id)
        with pytest.raises(Conflict) as last:
            await z.api_keys.revoke(mine.id)
        assert last.value.code == "last_api_key"

        agent = await z.agents.create("bot", expires_in_seconds=120)
        assert agent.token and agent.token_expires_at is not None
        rotated = await z.agents.rotate_token(agent.id, expires_in_seconds=3600)
        assert rotated.token_expires_at is not None
        assert rotated.token_expires_at > agent.token_expires_at
