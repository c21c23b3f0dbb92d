"""An agent with an active EVM session key on evm-local (a real anvil), zpay served over
HTTP, and the helpers the x402 tests share."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from eth_account import Account

from tests.integration.test_evm_lifecycle import approved_evm_key
from tests.jobs.support import Clock
from tests.support import Api, merchant_api
from zpay.jobs.reconcile import RECHECK_AFTER, reconcile_payments
from zpay.services.context import AppContext
from zpay.settings import Settings

USDC = 10**6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("evm-local",), default_chain="evm-local")


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


@dataclass
class Shop:
    """A merchant, its agent, a user-funded EVM session key and the x402 merchant wallet."""

    ctx: AppContext
    api: Api  # the merchant
    agent: Api  # the agent's token
    agent_token: str
    key: dict[str, Any]
    pay_to: str
    url: str  # zpay's base URL
    clock: Clock

    @property
    def key_id(self) -> str:
        return str(self.key["id"])

    async def status(self) -> dict[str, Any]:
        return await self.api.ok("GET", f"/v1/session-keys/{self.key_id}")

    async def books_equal_chain(self) -> dict[str, Any]:
        """funded - spent == remaining + held == the session wallet's balance ON CHAIN."""
        status = await self.status()
        adapter = self.ctx.chains.get("evm-local")
        on_chain = await adapter.balance(status["session_key_address"], adapter.token("USDC"))
        remaining = int(status["remaining_amount"].replace(".", ""))
        held = int(status["held_amount"].replace(".", ""))
        assert on_chain == remaining + held, (on_chain, status)
        return status

    async def usdc_of(self, address: str) -> int:
        adapter = self.ctx.chains.get("evm-local")
        return await adapter.balance(address, adapter.token("USDC"))

    async def link(self, **limits: Any) -> dict[str, Any]:
        session = await self.api.ok("POST", "/v1/sessions", {
            "agent_id": self.key["agent_id"], "expires_in_seconds": 3600, **limits})
        await self.api.ok("POST", f"/v1/session-keys/{self.key_id}/link",
                          {"session_id": session["id"]})
        return session

    async def pay_x402(self, payment_required: Any, idem: str, *,
                       max_amount: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"session_key_id": self.key_id,
                                "payment_required": payment_required}
        if max_amount is not None:
            body["max_amount"] = max_amount
        return await self.agent.post("/v1/x402/payments", body, **{"Idempotency-Key": idem})

    async def reconcile_after_chain_time(self, seconds: int) -> None:
        """Move the CHAIN's clock (a block stamped `seconds` later), then reconcile."""
        await rpc(self.ctx, "evm_increaseTime", seconds)
        await rpc(self.ctx, "evm_mine")
        self.clock.advance(seconds=RECHECK_AFTER.total_seconds() + 1)
        await reconcile_payments(self.ctx)


async def rpc(ctx: AppContext, method: str, *params: Any) -> Any:
    adapter: Any = ctx.chains.get("evm-local")
    async with httpx.AsyncClient() as client:
        body = (await client.post(adapter.rpc_url, json={
            "jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})).json()
    assert "error" not in body, body
    return body["result"]


@pytest.fixture
async def shop(ctx: AppContext, http: httpx.AsyncClient, served: str) -> Shop:
    ctx.clock = clock = Clock()
    api = await merchant_api(ctx, http)
    user = Account.create()
    await api.ok("POST", "/v1/faucet", {"wallet": user.address, "amount": "50"})
    agent = await api.ok("POST", "/v1/agents", {"name": "x402-agent"})
    status = await approved_evm_key(api, user, agent["id"], "1")
    return Shop(ctx=ctx, api=api, agent=api.as_(agent["token"]), agent_token=agent["token"],
                key=status, pay_to=Account.create().address, url=served, clock=clock)


def v2_required(shop: Shop, *, amount: int = 10_000, pay_to: str | None = None,
                network: str = "eip155:31337", asset: str | None = None,
                extra: dict[str, Any] | None = None, max_timeout_s: int = 120) -> str:
    """A PAYMENT-REQUIRED header value as x402's server writes it (base64 JSON)."""
    usdc = shop.ctx.chains.get("evm-local").token("USDC")
    doc = {"x402Version": 2,
           "resource": {"url": "http://shop.example/paid", "description": "a paid forecast"},
           "accepts": [{
               "scheme": "exact", "network": network, "asset": asset or usdc.address,
               "amount": str(amount), "payTo": pay_to or shop.pay_to,
               "maxTimeoutSeconds": max_timeout_s,
               "extra": extra if extra is not None else {"name": usdc.eip712_name,
                                                         "version": usdc.eip712_version}}]}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def decoded(header_value: str) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(header_value)))
