"""Issue 12's contract points: agent isolation by id, session-token scope, agent deletion
revokes and refunds, impossible recipients, failed payments as 402, database outage as 503."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from sqlalchemy import func, select

from tests.support import active_key, merchant_api, serve
from zpay.chains import solana_tx as stx
from zpay.domain import tokens
from zpay.jobs.refunds import run_refunds
from zpay.services.context import AppContext
from zpay.store.database import Database
from zpay.store.models import Event, Payment, PaymentAttempt, PolicySession, SessionKey


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, (code, resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    body = dict(resp.json())
    assert body["code"] == code, body
    return body


async def test_another_agents_objects_are_the_same_404_as_unknown_ids(
        ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        a, key_a, _ = await active_key(api, ctx, max_amount="10")
        b, key_b, _ = await active_key(api, ctx, max_amount="10")
        session_b = await api.ok("POST", "/v1/sessions", {"agent_id": b["id"]})
        paid = await api.as_(b["token"]).pay(key_b["id"], "1", str(Keypair().pubkey()))
        assert paid.status_code == 201, paid.text
        payment_b = paid.json()["id"]
        as_a = api.as_(a["token"])
        cases = [  # (another agent's object, an unknown id of the same kind, code)
            (f"/v1/payments/{payment_b}", "/v1/payments/pay_unknown", "payment_not_found"),
            (f"/v1/session-keys/{key_b['id']}", "/v1/session-keys/skey_unknown",
             "session_key_not_found"),
            (f"/v1/session-keys/{key_b['id']}/attempts", "/v1/session-keys/skey_unknown/attempts",
             "session_key_not_found"),
            (f"/v1/sessions/{session_b['id']}", "/v1/sessions/ses_unknown", "session_not_found"),
            (f"/v1/agents/{b['id']}", "/v1/agents/agt_unknown", "agent_not_found"),
        ]
        for other, unknown, code in cases:
            theirs = _problem(await as_a.get(other), 404, code)
            nothing = _problem(await as_a.get(unknown), 404, code)
            assert set(theirs) == set(nothing), (theirs, nothing)
            # Nothing of the other agent leaks: not its key, not its agent.
            for secret in (key_b["id"], b["id"], session_b["id"]):
                assert secret not in theirs["detail"] or secret in other, theirs
            assert key_b["id"] not in str(theirs) or key_b["id"] in other
        _problem(await as_a.get(f"/v1/session-keys/{key_b['id']}/can-afford", amount="1"), 404,
                 "session_key_not_found")
        # Its own payment list does not show the other agent's payment.
        listed = await as_a.ok("GET", "/v1/payments")
        assert payment_b not in [p["id"] for p in listed["data"]]
        assert key_a["id"] != key_b["id"]


async def test_a_session_token_sees_exactly_what_it_can_act_on(ctx: AppContext,
                                                               served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "shopper"})
        s1 = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        s2 = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        _, k1, _ = await active_key(api, ctx, max_amount="10", session_id=s1["id"], agent=agent)
        _, k2, _ = await active_key(api, ctx, max_amount="10", session_id=s2["id"], agent=agent)
        _, k3, _ = await active_key(api, ctx, max_amount="10", agent=agent)  # not linked
        to = str(Keypair().pubkey())
        pays = {}
        for key in (k1, k2, k3):
            resp = await api.as_(agent["token"]).pay(key["id"], "1", to)
            assert resp.status_code == 201, resp.text
            pays[key["id"]] = resp.json()["id"]
        me = api.as_(s1["access_token"])
        assert [k["id"] for k in (await me.ok("GET", "/v1/session-keys"))["data"]] == [k1["id"]]
        assert [p["id"] for p in (await me.ok("GET", "/v1/payments"))["data"]] == [
            pays[k1["id"]]]
        assert [s["id"] for s in (await me.ok("GET", "/v1/sessions"))["data"]] == [s1["id"]]
        assert (await me.ok("GET", f"/v1/sessions/{s1['id']}"))["id"] == s1["id"]
        await me.ok("GET", f"/v1/session-keys/{k1['id']}")
        await me.ok("GET", f"/v1/payments/{pays[k1['id']]}")
        _problem(await me.get(f"/v1/sessions/{s2['id']}"), 404, "session_not_found")
        for key in (k2, k3):
            _problem(await me.get(f"/v1/session-keys/{key['id']}"), 404,
                     "session_key_not_found")
            _problem(await me.get(f"/v1/payments/{pays[key['id']]}"), 404, "payment_not_found")
            _problem(await me.get(f"/v1/session-keys/{key['id']}/attempts"), 404,
                     "session_key_not_found")
            _problem(await me.pay(key["id"], "1", to), 404, "session_key_not_found")
        # Filters cannot widen the scope.
        assert (await me.ok("GET", "/v1/payments", session_key_id=k2["id"]))["data"] == []
        assert (await me.ok("GET", "/v1/session-keys", agent_id=agent["id"]))["data"][0][
            "id"] == k1["id"]
        # What it can act on, it can act on.
        assert (await me.pay(k1["id"], "1", to)).status_code == 201
        # The agent's own token still sees all of the agent's.
        everything = await api.as_(agent["token"]).ok("GET", "/v1/session-keys")
        assert {k["id"] for k in everything["data"]} == {k1["id"], k2["id"], k3["id"]}


async def test_deleting_an_agent_revokes_its_keys_and_refunds_on_chain(
        ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        session = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"]})
        _, other_key, _ = await active_key(api, ctx, max_amount="5")  # another agent's
        assert (await api.as_(agent["token"]).pay(key["id"], "3",
                                                  str(Keypair().pubkey()))).status_code == 201
        adapter = ctx.chains.get("solana-local")
        usdc = adapter.token("USDC")
        before = await adapter.balance(user.address, usdc)

        deleted = await api.ok("DELETE", f"/v1/agents/{agent['id']}")
        assert deleted["revoked_session_key_ids"] == [key["id"]]
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["status"], status["refund_status"]) == ("revoked", "pending")
        assert (await api.ok("GET", f"/v1/sessions/{session['id']}"))["status"] == "revoked"
        assert (await api.ok("GET", f"/v1/session-keys/{other_key['id']}"))["status"] == "active"
        events = await api.ok("GET", "/v1/events", type="session_key.revoked")
        assert [e["object_id"] for e in events["data"]] == [key["id"]]

        assert await run_refunds(ctx) >= 1
        # The chain is the referee: the user got the remainder back.
        assert await adapter.balance(user.address, usdc) == before + 7 * 10**6
        assert await adapter.balance(key["session_key_address"], usdc) == 0
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["refund_status"], status["refunded_amount"]) == ("done", "7.000000")
        # A deleted agent is gone (404), and so is its token (401).
        _problem(await api.delete(f"/v1/agents/{agent['id']}"), 404, "agent_not_found")
        assert (await api.as_(agent["token"]).get("/v1/session-keys")).status_code == 401


async def _rows(ctx: AppContext) -> tuple[int, ...]:
    async with ctx.db.sessions() as s:
        return tuple([(await s.execute(select(func.count()).select_from(m))).scalar_one()
                      for m in (Payment, PaymentAttempt, Event, PolicySession, SessionKey)])


async def test_impossible_recipients_are_refused_before_anything_is_held(
        ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        adapter: Any = ctx.chains.get("solana-local")
        wallet = Pubkey.from_string(key["session_key_address"])
        mint = Pubkey.from_string(adapter.token("USDC").address)
        impossible = {
            "the session wallet itself": str(wallet),
            "its token account": str(stx.associated_token_address(wallet, mint)),
            "the system program": "11111111111111111111111111111111",
            "the fee payer": adapter.fee_payer_address,
            "the mint": str(mint),
            "the token program": str(stx.TOKEN_PROGRAM_ID),
        }
        me = api.as_(agent["token"])
        before = await _rows(ctx)
        for what, recipient in impossible.items():
            body = _problem(await me.pay(key["id"], "1", recipient), 422, "invalid_recipient")
            assert "payment" not in body, what
            _problem(await me.get(f"/v1/session-keys/{key['id']}/can-afford", amount="1",
                                  recipient=recipient), 422, "invalid_recipient")
        # allowed_recipients must be addresses of the session's chains.
        for bad in (["not-an-address"], ["0x" + "ab" * 20], [str(Keypair().pubkey()), "x" * 40]):
            _problem(await api.post("/v1/sessions", {"agent_id": agent["id"],
                                                     "allowed_recipients": bad}),
                     422, "invalid_recipient")
        assert await _rows(ctx) == before
        ok = await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"],
                                                   "allowed_recipients": [user.address]})
        assert ok["allowed_recipients"] == [user.address]
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")
        assert (await me.pay(key["id"], "1", str(Keypair().pubkey()))).status_code == 201


async def test_active_hours_start_equal_to_end_is_refused(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "a"})
        for hours in ([5, 5], [0, 0], [24, 24]):
            _problem(await api.post("/v1/sessions", {"agent_id": agent["id"],
                                                     "active_hours": hours}),
                     422, "invalid_active_hours")
        await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"], "active_hours": [0, 24]})
        await api.ok("POST", "/v1/sessions", {"agent_id": agent["id"], "active_hours": [22, 6]})


async def test_a_database_outage_is_503_with_retry_after(ctx: AppContext) -> None:
    from tests.support import free_port

    if ctx.settings.database_url.startswith("sqlite"):
        dead = "sqlite+aiosqlite:////nonexistent-zpay-dir/zpay.db"
    else:
        dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/zpay"
    down = Database(dead)
    token = "Bearer " + tokens.generate("sk", "test")  # well formed: it needs the database
    try:
        async with serve(dataclasses.replace(ctx, db=down)) as url, httpx.AsyncClient(
                base_url=url, timeout=30) as http:
            for resp in (
                await http.get("/v1/agents", headers={"Authorization": token}),
                await http.post("/v1/payments", json={"session_key_id": "skey_x", "amount": "1",
                                                      "recipient": "x"},
                                headers={"Authorization": token, "Idempotency-Key": "k"}),
            ):
                body = _problem(resp, 503, "database_unavailable")
                assert resp.headers["retry-after"] == str(body["retry_after"])
                assert int(resp.headers["retry-after"]) > 0
                assert dead.split("/")[-1] not in body["detail"]  # no connection detail
    finally:
        await down.dispose()
