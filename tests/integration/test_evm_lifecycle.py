"""DESIGN.md's lifecycle on evm-local (a real anvil) with BOTH approval forms; the books equal
the chain after every step."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from eth_account import Account

from tests.support import Api, merchant_api
from zpay.chains.evm_tx import UnsignedTransaction
from zpay.services.context import AppContext
from zpay.settings import Settings

USDC = 10**6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local", "evm-local"))


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


def sign(user: Any, approval: dict[str, Any]) -> dict[str, Any]:
    """What MetaMask does with each approval form."""
    approval = approval.get("approval", approval)  # a session key carries its approval
    if approval["format"] == "eip712":
        typed = approval["typed_data"]
        return {
            "signature": Account.sign_typed_data(
                user.key, full_message=typed
            ).signature.to_0x_hex(),
            "typed_data": typed,
        }
    tx = UnsignedTransaction.from_json(approval["unsigned_transaction"])
    return {
        "signed_transaction": Account.sign_transaction(
            tx.as_signable(), user.key
        ).raw_transaction.to_0x_hex()
    }


async def approved_evm_key(api: Api, user: Any, agent_id: str,
                           max_amount: str) -> dict[str, Any]:
    """An EIP-3009 session key on evm-local for `agent_id`, funded by `user` (who holds the
    tokens): created, approved as MetaMask would sign it, active. Returns its status."""
    key = await api.ok("POST", "/v1/session-keys", {
        "agent_id": agent_id, "user_wallet": user.address, "max_amount": max_amount,
        "chain": "evm-local", "expires_in_seconds": 3600, "approval_method": "eip3009"})
    status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", sign(user, key))
    assert status["status"] == "active"
    return status


async def balances(ctx: AppContext, *addresses: str) -> list[int]:
    adapter = ctx.chains.get("evm-local")
    return [await adapter.balance(a, adapter.token("USDC")) for a in addresses]


async def books_equal_chain(api: Api, ctx: AppContext, key_id: str) -> dict[str, Any]:
    status = await api.ok("GET", f"/v1/session-keys/{key_id}")
    remaining = status["remaining_amount"].replace(".", "")
    held = status["held_amount"].replace(".", "")
    [on_chain] = await balances(ctx, status["session_key_address"])
    assert on_chain == int(remaining) + int(held), status
    return status


@pytest.mark.parametrize("method", ["eip3009", "transaction"])
async def test_evm_lifecycle(ctx: AppContext, http: httpx.AsyncClient, method: str) -> None:
    api = await merchant_api(ctx, http)
    adapter = ctx.chains.get("evm-local")
    user = Account.create()
    await api.ok(
        "POST", "/v1/faucet", {"wallet": user.address, "amount": "100", "chain": "evm-local"}
    )
    if method == "transaction":  # the fallback form: the user pays the gas of their transfer
        await adapter.faucet(user.address, adapter.native_token(), 10**17)  # type: ignore[attr-defined]
    agent = await api.ok("POST", "/v1/agents", {"name": "evm-shopper"})
    key = await api.ok(
        "POST",
        "/v1/session-keys",
        {
            "agent_id": agent["id"],
            "user_wallet": user.address,
            "max_amount": "30",
            "chain": "evm-local",
            "expires_in_seconds": 3600,
            "approval_method": method,
        },
    )
    assert key["status"] == "pending_approval"
    assert key["approval"]["format"] == ("eip712" if method == "eip3009" else "evm_transaction")
    await books_equal_chain(api, ctx, key["id"])

    status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", sign(user, key))
    assert status["status"] == "active"
    await books_equal_chain(api, ctx, key["id"])
    assert await balances(ctx, user.address) == [70 * USDC]

    merchant = Account.create().address
    me = api.as_(agent["token"])
    for amount in ("10", "20"):
        resp = await me.pay(key["id"], amount, merchant)
        assert resp.status_code == 201, resp.text
        assert resp.json()["status"] == "succeeded" and resp.json()["tx_id"]
        await books_equal_chain(api, ctx, key["id"])
    status = await books_equal_chain(api, ctx, key["id"])
    assert status["status"] == "exhausted"
    assert await balances(ctx, merchant) == [30 * USDC]
    refused = await me.pay(key["id"], "1", merchant)
    assert refused.json()["code"] == "insufficient_session_balance"

    top_up = await api.ok(
        "POST", f"/v1/session-keys/{key['id']}/top-ups", {"amount": "5", "approval_method": method}
    )
    status = await api.ok(
        "POST", f"/v1/session-keys/{key['id']}/top-ups/{top_up['id']}/approval", sign(user, top_up)
    )
    assert (status["status"], status["remaining_amount"]) == ("active", "5.000000")
    await books_equal_chain(api, ctx, key["id"])
    assert (await me.pay(key["id"], "2", merchant)).status_code == 201
    await books_equal_chain(api, ctx, key["id"])
    assert await balances(ctx, merchant, user.address) == [32 * USDC, 65 * USDC]


async def test_evm_addresses_and_unknown_chain(ctx: AppContext, http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    agent = await api.ok("POST", "/v1/agents", {"name": "a"})
    base = {"agent_id": agent["id"], "max_amount": "1", "expires_in_seconds": 600}
    bad = await api.post(
        "/v1/session-keys", {**base, "chain": "evm-local", "user_wallet": "0x1234"}
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_address")
    unknown = await api.post(
        "/v1/session-keys", {**base, "chain": "tron", "user_wallet": "0x" + "11" * 20}
    )
    assert unknown.json()["code"] == "unknown_chain"
    assert "evm-local" in unknown.json()["known_chains"]
    assert "base-sepolia" in unknown.json()["detail"]
    disabled = await api.post(
        "/v1/session-keys", {**base, "chain": "base", "user_wallet": "0x" + "11" * 20}
    )
    assert disabled.json()["code"] == "chain_not_enabled"
