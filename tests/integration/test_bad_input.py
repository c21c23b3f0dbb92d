"""Bad input: a 4xx problem+json with a stable code, and nothing written."""

from __future__ import annotations

import httpx
import pytest
from solders.keypair import Keypair
from sqlalchemy import func, select

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext
from zpay.store.models import Agent, Event, Payment, SessionKey


async def _counts(ctx: AppContext) -> tuple[int, ...]:
    async with ctx.db.sessions() as s:
        return tuple([(await s.execute(select(func.count()).select_from(m))).scalar_one()
                      for m in (Payment, SessionKey, Agent, Event)])


@pytest.mark.parametrize(("amount", "code"), [
    ("1.0000001", "amount_precision_exceeded"), ("-1", "invalid_amount"),
    ("abc", "invalid_amount"), ("1e3", "invalid_amount"),
    ("99999999999999999999999999999999999", "amount_out_of_range"), ("0", "invalid_amount"),
])
async def test_bad_amounts(ctx: AppContext, served: str, amount: str, code: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        before = await _counts(ctx)
        resp = await api.pay(key["id"], amount, str(Keypair().pubkey()))
        assert resp.status_code == 422
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == code
        resp = await api.post("/v1/session-keys", {
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": amount,
            "expires_in_seconds": 600})
        assert (resp.status_code, resp.json()["code"]) == (422, code)
        assert await _counts(ctx) == before


async def test_bad_ids_addresses_auth_and_bodies(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        before = await _counts(ctx)
        cases = [
            (await api.get("/v1/session-keys/skey_nope"), 404, "session_key_not_found"),
            (await api.get("/v1/payments/pay_nope"), 404, "payment_not_found"),
            (await api.pay("skey_nope", "1", str(Keypair().pubkey())), 404,
             "session_key_not_found"),
            (await api.pay(key["id"], "1", "not-a-solana-address"), 422, "invalid_address"),
            (await api.pay(key["id"], "1", "0x" + "ab" * 20), 422, "invalid_address"),
            (await api.post("/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": "abc", "max_amount": "1",
                "expires_in_seconds": 600}), 422, "invalid_address"),
            (await api.post("/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "1",
                "expires_in_seconds": 600, "chain": "dogechain"}), 422, "unknown_chain"),
            (await api.post("/v1/session-keys", {
                "agent_id": "agt_nope", "user_wallet": user.address, "max_amount": "1",
                "expires_in_seconds": 600}), 404, "agent_not_found"),
            (await api.post("/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "1"}),
             422, "invalid_expiry"),
            (await api.post("/v1/session-keys", {"agent_id": agent["id"], "bogus": 1}),
             422, "invalid_request"),
            (await api.post("/v1/payments", {"session_key_id": key["id"], "amount": 1,
                                             "recipient": "x"}, **{"Idempotency-Key": "k1"}),
             422, "invalid_request"),
            (await api.post("/v1/payments", {"session_key_id": key["id"], "amount": "1",
                                             "recipient": str(Keypair().pubkey())}),
             400 if False else 422, "idempotency_key_missing"),
            (await api.as_("sk_test_wrong").get("/v1/session-keys"), 401, "invalid_credentials"),
            (await api.as_(api.token[:-1] + ("A" if api.token[-1] != "A" else "B")).get(
                "/v1/session-keys"), 401, "invalid_credentials"),
            (await http.get("/v1/session-keys"), 401, "missing_credentials"),
            (await api.post("/v1/sessions", {"agent_id": agent["id"], "timezone": "Mars/Base"}),
             422, "invalid_timezone"),
        ]
        for resp, status, code in cases:
            assert resp.status_code == status, (code, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json"), code
            assert resp.json()["code"] == code, resp.text
        assert await _counts(ctx) == before
