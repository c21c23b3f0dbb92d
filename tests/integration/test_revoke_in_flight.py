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
