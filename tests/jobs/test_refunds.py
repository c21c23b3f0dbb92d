"""Refunds on revoke and on expiry, on both chain families: the user receives exactly what
remained; `refund_on_close: false` opts out; the Solana token account's rent goes back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from eth_account import Account
from solders.keypair import Keypair

from tests.support import Api, merchant_api
from zpay.client.wallet import EvmWallet, SolanaWallet
from zpay.jobs.expiry import expire_due
from zpay.jobs.refunds import run_refunds
from zpay.services.context import AppContext
from zpay.settings import Settings

USDC = 10**6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local", "evm-local"))


@pytest.fixture
async def api(ctx: AppContext, served: str) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        yield await merchant_api(ctx, http)


async def _key(api: Api, chain: str, refund_on_close: bool = True,
               ) -> tuple[dict[str, Any], str]:
    wallet: Any = SolanaWallet.generate() if chain == "solana-local" else EvmWallet.generate()
    await api.ok("POST", "/v1/faucet", {"wallet": wallet.address, "amount": "100",
                                        "chain": chain})
    agent = await api.ok("POST", "/v1/agents", {"name": "a"})
    key = await api.ok("POST", "/v1/session-keys", {
        "agent_id": agent["id"], "user_wallet": wallet.address, "max_amount": "40",
        "chain": chain, "expires_in_seconds": 3600, "refund_on_close": refund_on_close})
    await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", wallet.sign_approval(key))
    merchant = str(Keypair().pubkey()) if chain == "solana-local" else Account.create().address
    assert (await api.pay(key["id"], "15.5", merchant)).status_code == 201
    return key, wallet.address


async def _balance(ctx: AppContext, chain: str, address: str) -> int:
    adapter = ctx.chains.get(chain)
    return await adapter.balance(address, adapter.token("USDC"))


@pytest.mark.parametrize("chain", ["solana-local", "evm-local"])
@pytest.mark.parametrize("how", ["revoke", "expiry"])
async def test_refund_returns_exactly_the_remainder(ctx: AppContext, api: Api, chain: str,
                                                    how: str) -> None:
    key, user = await _key(api, chain)
    assert await _balance(ctx, chain, user) == 60 * USDC
    if how == "revoke":
        await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
    else:
        later = ctx.now() + timedelta(hours=2)
        ctx.clock = lambda: later
        await expire_due(ctx)
    adapter: Any = ctx.chains.get(chain)
    fee_payer_before = await adapter.fee_payer_lamports() if chain == "solana-local" else 0
    assert await run_refunds(ctx) == 1
    assert await _balance(ctx, chain, user) == (60 + 24.5) * USDC
    assert await _balance(ctx, chain, key["session_key_address"]) == 0
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert status["status"] == ("revoked" if how == "revoke" else "expired")
    assert (status["refund_status"], status["refunded_amount"]) == ("done", "24.500000")
    events = await api.ok("GET", "/v1/events", type="session_key.refunded",
                          object_id=key["id"])
    [event] = events["data"]
    assert event["data"]["refund_amount"] == "24.500000" and event["data"]["refund_tx_id"]
    assert await run_refunds(ctx) == 0  # nothing is swept twice
    if chain == "solana-local":  # the token account is closed: its rent (> fees) came back
        assert await adapter.fee_payer_lamports() > fee_payer_before


@pytest.mark.parametrize("chain", ["solana-local", "evm-local"])
async def test_refund_opt_out(ctx: AppContext, api: Api, chain: str) -> None:
    key, user = await _key(api, chain, refund_on_close=False)
    await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
    assert await run_refunds(ctx) == 0
    assert await _balance(ctx, chain, key["session_key_address"]) == 24_500_000
    assert await _balance(ctx, chain, user) == 60 * USDC
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert status["refund_status"] is None and status["refund_on_close"] is False
