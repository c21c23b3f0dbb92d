"""Revocation is immediate: a payment authorized but not yet sent when its key is revoked
fails, its hold is released, `payment.failed` is emitted, and nothing moves on chain."""

from __future__ import annotations

from typing import Any

import httpx
from solders.keypair import Keypair

from tests.support import active_key, merchant_api
from zpay.services import session_keys
from zpay.services.auth import authenticate
from zpay.services.context import AppContext


async def test_revoked_between_authorize_and_submit(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        merchant = await authenticate(ctx, f"Bearer {api.token}")
        adapter: Any = ctx.chains.get("solana-local")
        real_prepare = adapter.prepare_transfer

        async def prepare_while_the_merchant_revokes(**kwargs: Any) -> Any:
            # The merchant's revoke lands after authorization, before the transfer is sent.
            await session_keys.revoke(ctx, merchant, key["id"])
            return await real_prepare(**kwargs)

        adapter.prepare_transfer = prepare_while_the_merchant_revokes
        to = str(Keypair().pubkey())
        try:
            resp = await api.as_(agent["token"]).pay(key["id"], "3", to)
        finally:
            adapter.prepare_transfer = real_prepare
        body = resp.json()
        assert (resp.status_code, body["status"], body["failure_code"]) == (
            201, "failed", "session_key_revoked")
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")
        token = adapter.token("USDC")
        assert await adapter.balance(to, token) == 0
        assert await adapter.balance(key["session_key_address"], token) == 10 * 10**6
        events = await api.ok("GET", "/v1/events", type="payment.failed")
        assert [e["object_id"] for e in events["data"]] == [body["id"]]
        assert events["data"][0]["data"]["failure_code"] == "session_key_revoked"


async def test_unexpected_error_after_authorization_never_pays_twice(
    ctx: AppContext, served: str
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        adapter: Any = ctx.chains.get("solana-local")
        real_submit = adapter.submit_transfer

        async def submit_then_crash(prepared: Any) -> None:
            await real_submit(prepared)
            raise RuntimeError("the process lost track after sending")

        adapter.submit_transfer = submit_then_crash
        to = str(Keypair().pubkey())
        me = api.as_(agent["token"])
        try:
            first = await me.pay(key["id"], "4", to, idem="order-1")
        finally:
            adapter.submit_transfer = real_submit
        assert first.status_code == 202 and first.json()["status"] == "submitted"
        again = await me.pay(key["id"], "4", to, idem="order-1")
        assert again.json() == first.json()  # the same payment, never a second one
        assert await adapter.balance(to, adapter.token("USDC")) == 4 * 10**6
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert status["held_amount"] == "4.000000"  # until reconciliation captures it
