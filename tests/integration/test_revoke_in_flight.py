"""Revocation is immediate: a payment whose key is revoked while its transfer is being
signed (signing comes before the authorization's lock) is refused under the lock, its
signed transfer dropped, and nothing moves on chain; one already recorded and sent is
settled from the chain."""

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
            # The merchant's revoke lands while the transfer is being signed.
            await session_keys.revoke(ctx, merchant, key["id"])
            return await real_prepare(**kwargs)

        adapter.prepare_transfer = prepare_while_the_merchant_revokes
        to = str(Keypair().pubkey())
        try:
            resp = await api.as_(agent["token"]).pay(key["id"], "3", to)
        finally:
            adapter.prepare_transfer = real_prepare
        # Refused (never a 2xx): 402 problem+json with the refusal's code; no payment.
        problem = resp.json()
        assert (resp.status_code, problem["code"]) == (402, "session_key_revoked")
        assert resp.headers["content-type"].startswith("application/problem+json")
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")
        token = adapter.token("USDC")
        assert await adapter.balance(to, token) == 0
        assert await adapter.balance(key["session_key_address"], token) == 10 * 10**6
        assert (await api.ok("GET", "/v1/payments"))["data"] == []
        attempts = await api.ok("GET", f"/v1/session-keys/{key['id']}/attempts")
        assert [a["reason"] for a in attempts["data"]] == ["session_key_revoked"]


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
