"""Tenancy, token scoping, immediate revocation, and no secret anywhere."""

from __future__ import annotations

import logging

import httpx
import pytest
from solders.keypair import Keypair
from sqlalchemy import select

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext
from zpay.store.models import Event, PaymentAttempt, WalletSecret


async def test_other_merchant_gets_404(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        a = await merchant_api(ctx, http, "a")
        b = await merchant_api(ctx, http, "b")
        agent, key, _ = await active_key(a, ctx, max_amount="10")
        session = await a.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        pay = await a.pay(key["id"], "1", str(Keypair().pubkey()))
        for path in (f"/v1/session-keys/{key['id']}", f"/v1/agents/{agent['id']}",
                     f"/v1/sessions/{session['id']}", f"/v1/payments/{pay.json()['id']}",
                     f"/v1/session-keys/{key['id']}/attempts"):
            resp = await b.get(path)
            assert resp.status_code == 404, path
            assert resp.headers["content-type"].startswith("application/problem+json")
        for path in (f"/v1/session-keys/{key['id']}/revoke", f"/v1/agents/{agent['id']}/freeze"):
            assert (await b.post(path)).status_code == 404
        assert (await b.pay(key["id"], "1", str(Keypair().pubkey()))).status_code == 404
        assert (await b.get("/v1/session-keys")).json()["data"] == []


async def test_agent_token_scope(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        other_agent, other_key, _ = await active_key(api, ctx, max_amount="10")
        session = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        me = api.as_(agent["token"])
        forbidden = [
            ("/v1/sessions", {"agent_id": agent["id"]}),
            (f"/v1/session-keys/{key['id']}/link", {"session_id": session["id"]}),
            (f"/v1/session-keys/{key['id']}/top-ups", {"amount": "1"}),
            ("/v1/session-keys", {"agent_id": agent["id"], "user_wallet": user.address,
                                  "max_amount": "1", "expires_in_seconds": 600}),
            ("/v1/agents", {"name": "x"}),
        ]
        for path, body in forbidden:
            resp = await me.post(path, body)
            assert (resp.status_code, resp.json()["code"]) == (403, "merchant_key_required"), path
        assert (await me.delete(f"/v1/session-keys/{key['id']}/link")).status_code == 403
        # another agent's key is invisible
        assert (await me.get(f"/v1/session-keys/{other_key['id']}")).status_code == 404
        assert (await me.pay(other_key["id"], "1", str(Keypair().pubkey()))).status_code == 404
        assert [k["id"] for k in (await me.ok("GET", "/v1/session-keys"))["data"]] == [key["id"]]
        # reading and paying its own key works
        assert (await me.get(f"/v1/session-keys/{key['id']}/can-afford",
                             amount="1")).json()["allowed"] is True
        assert (await me.pay(key["id"], "1", str(Keypair().pubkey()))).status_code == 201
        assert other_agent["id"] != agent["id"]


async def test_revocation_rotation_freeze_apply_on_the_next_call(ctx: AppContext,
                                                                 served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        me = api.as_(agent["token"])
        to = str(Keypair().pubkey())
        await api.ok("POST", f"/v1/agents/{agent['id']}/freeze")
        resp = await me.pay(key["id"], "1", to)
        assert (resp.status_code, resp.json()["code"]) == (401, "agent_frozen")
        await api.ok("POST", f"/v1/agents/{agent['id']}/unfreeze")
        assert (await me.pay(key["id"], "1", to)).status_code == 201

        rotated = await api.ok("POST", f"/v1/agents/{agent['id']}/rotate-token")
        assert (await me.pay(key["id"], "1", to)).status_code == 401
        me = api.as_(rotated["token"])
        assert (await me.pay(key["id"], "1", to)).status_code == 201

        session = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        await api.ok("POST", f"/v1/session-keys/{key['id']}/link", {"session_id": session["id"]})
        await api.ok("POST", f"/v1/sessions/{session['id']}/revoke")
        resp = await me.pay(key["id"], "1", to)
        assert (resp.status_code, resp.json()["code"]) == (402, "session_revoked")
        await api.ok("DELETE", f"/v1/session-keys/{key['id']}/link")

        await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
        resp = await me.pay(key["id"], "1", to)
        assert (resp.status_code, resp.json()["code"]) == (402, "session_key_revoked")

        await api.ok("DELETE", f"/v1/agents/{agent['id']}")
        assert (await me.get(f"/v1/session-keys/{key['id']}")).status_code == 401


async def test_no_secret_in_responses_logs_events_or_audit(
    ctx: AppContext, served: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        bodies = [await api.pay(key["id"], "1", str(Keypair().pubkey())),
                  await api.get(f"/v1/session-keys/{key['id']}"),
                  await api.get("/v1/events"), await api.get("/v1/session-keys"),
                  await api.get(f"/v1/session-keys/{key['id']}/attempts")]
        texts = [r.text for r in bodies]
    async with ctx.db.sessions() as s:
        row = await s.get(WalletSecret, key["id"])
        events = (await s.execute(select(Event))).scalars().all()
        attempts = (await s.execute(select(PaymentAttempt))).scalars().all()
    assert row is not None
    from zpay.custody import SealedSecret

    secret = ctx.custody.open(key["id"], SealedSecret(row.key_version, row.wrapped_data_key,
                                                      row.ciphertext))
    import base58

    needles = [secret.hex(), base58.b58encode(secret).decode(), str(list(secret))[:60],
               ctx.settings.master_key, agent["token"], api.token,
               base58.b58encode(bytes(user.keypair)).decode()]
    haystack = "\n".join([*texts, caplog.text, *(repr(e.data) for e in events),
                          *(repr(vars(a)) for a in attempts)])
    for needle in needles:
        assert needle and needle not in haystack
    assert row.ciphertext and secret not in row.ciphertext


async def test_sealed_secret_moved_to_another_row_fails(ctx: AppContext, served: str) -> None:
    from zpay.custody import CustodyError, SealedSecret

    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        _, k1, _ = await active_key(api, ctx, max_amount="1")
        _, k2, _ = await active_key(api, ctx, max_amount="1")
    async with ctx.db.sessions() as s:
        row = await s.get(WalletSecret, k1["id"])
    assert row is not None
    sealed = SealedSecret(row.key_version, row.wrapped_data_key, row.ciphertext)
    with pytest.raises(CustodyError):
        ctx.custody.open(k2["id"], sealed)
