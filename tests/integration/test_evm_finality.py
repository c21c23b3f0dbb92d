"""EVM finality comes from the chain, in any process: a worker that never saw a payment
settles it, and a transfer still in the mempool is never released by a wall clock."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from eth_account import Account

from tests.integration.test_evm_lifecycle import sign
from tests.jobs.support import Clock
from tests.support import merchant_api
from zpay.chains.evm import EvmAdapter
from zpay.chains.registry import get_network
from zpay.jobs.reconcile import RECHECK_AFTER
from zpay.jobs.scheduler import run_once
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.relayer_journal import DbRelayerJournal

USDC = 10**6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("evm-local",), default_chain="evm-local",
                               confirm_timeout_s=2.0)


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


async def _rpc(adapter: Any, method: str, *params: Any) -> Any:
    async with httpx.AsyncClient() as client:
        body = (await client.post(adapter.rpc_url, json={
            "jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})).json()
    assert "error" not in body, body
    return body["result"]


async def test_a_worker_that_never_saw_a_payment_settles_it_from_the_chain(
        ctx: AppContext, http: httpx.AsyncClient, settings: Settings) -> None:
    ctx.clock = clock = Clock()
    api = await merchant_api(ctx, http)
    adapter: Any = ctx.chains.get("evm-local")
    user = Account.create()
    await api.ok("POST", "/v1/faucet", {"wallet": user.address, "amount": "50"})
    agent = await api.ok("POST", "/v1/agents", {"name": "a"})
    key = await api.ok("POST", "/v1/session-keys", {
        "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "30",
        "expires_in_seconds": 7200})
    await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", sign(user, key))

    await _rpc(adapter, "evm_setAutomine", False)  # the block does not come in time
    merchant = Account.create().address
    resp = await api.as_(agent["token"]).pay(key["id"], "12", merchant)
    assert (resp.status_code, resp.json()["status"]) == (202, "submitted")

    # Another process (a worker, a replica, this one restarted): no memory of the send.
    relayer_key = (settings.data_dir / "chains" / "evm-local" / "relayer.key").read_text()
    fresh = await EvmAdapter.local(get_network("evm-local"), adapter.rpc_url,
                                   bytes.fromhex(relayer_key.strip().removeprefix("0x")),
                                   journal=DbRelayerJournal(ctx.db))
    ctx.chains.adapters["evm-local"] = fresh
    try:
        # Far past any wall-clock grace (the old code released after 10 minutes) but
        # before the chain's validBefore: still in the mempool, it may land — nothing is
        # decided.
        clock.advance(seconds=(timedelta(minutes=11) + RECHECK_AFTER).total_seconds())
        await run_once(ctx)
        payment = await api.ok("GET", f"/v1/payments/{resp.json()['id']}")
        assert payment["status"] == "submitted"
        await _rpc(adapter, "evm_mine")  # the block arrives
        clock.advance(seconds=RECHECK_AFTER.total_seconds())
        await run_once(ctx)
        payment = await api.ok("GET", f"/v1/payments/{resp.json()['id']}")
        assert payment["status"] == "succeeded" and payment["tx_id"]
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["spent_amount"], status["held_amount"]) == ("12.000000", "0.000000")
        token = fresh.token("USDC")
        assert await fresh.balance(merchant, token) == 12 * USDC
        assert await fresh.balance(key["session_key_address"], token) == 18 * USDC
    finally:
        await _rpc(adapter, "evm_setAutomine", True)
        ctx.chains.adapters["evm-local"] = adapter
        await fresh.close()
