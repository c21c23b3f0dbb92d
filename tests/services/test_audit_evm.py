"""The audit on the EVM family too (anvil, EIP-3009 USDC): the same books, the same verdicts."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from eth_account import Account

from tests.services.test_audit import audit_events, finding
from tests.support import Api, merchant_api
from zpay.client.wallet import EvmWallet
from zpay.jobs.audit import run_audit
from zpay.services.context import AppContext
from zpay.settings import Settings

USDC = 10**6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("evm-local",), default_chain="evm-local")


@pytest.fixture
async def api(ctx: AppContext, served: str) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        yield await merchant_api(ctx, http)


async def test_an_evm_session_wallet_is_audited_like_any_other(ctx: AppContext, api: Api) -> None:
    user = EvmWallet.generate()
    await api.ok(
        "POST", "/v1/faucet", {"wallet": user.address, "amount": "100", "chain": "evm-local"}
    )
    agent = await api.ok("POST", "/v1/agents", {"name": "a"})
    key = await api.ok(
        "POST",
        "/v1/session-keys",
        {
            "agent_id": agent["id"],
            "user_wallet": user.address,
            "max_amount": "40",
            "chain": "evm-local",
            "expires_in_seconds": 3600,
        },
    )
    await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", user.sign_approval(key))
    paid = await api.pay(key["id"], "15.5", Account.create().address)
    assert paid.status_code == 201, paid.text

    assert await run_audit(ctx) == 1
    row = await finding(ctx, key["id"])
    assert (row.state, row.expected, row.on_chain) == ("consistent", 24_500_000, 24_500_000)

    # Straight into the session wallet, past the books.
    await api.ok(
        "POST",
        "/v1/faucet",
        {"wallet": key["session_key_address"], "amount": "3", "chain": "evm-local"},
    )
    live = await api.ok("GET", "/v1/audit")
    [shown] = live["data"]
    assert (
        shown["state"],
        shown["expected_amount"],
        shown["on_chain_amount"],
        shown["difference"],
    ) == ("difference", "24.500000", "27.500000", "3.000000")
    assert shown["recent_payments"][0]["id"] == paid.json()["id"]
    assert await audit_events(ctx) == []  # the live read records nothing
