"""`pay_x402` against the x402 REFERENCE implementation (the `x402` package's resource-server
middleware and its facilitator, EVM `exact` on a real anvil): the agent's MCP client asks
for a paid resource, zpay pays it from the session key, the facilitator settles, zpay
captures, and the books equal the chain. Over stdio and over `/mcp`, both databases."""

from __future__ import annotations

import dataclasses
from decimal import Decimal as D
from typing import Any

import httpx
import pytest
from eth_account import Account

from tests.integration.test_evm_lifecycle import approved_evm_key
from tests.mcp.conftest import TRANSPORTS, connect
from tests.support import merchant_api
from tests.x402.support import RESOURCE_BODY, x402_resource_server
from zpay.services.context import AppContext
from zpay.settings import Settings

PRICE = 10_000  # 0.01 USDC


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("evm-local",), default_chain="evm-local")


@dataclasses.dataclass(frozen=True)
class EvmAgent:
    merchant: Any
    token: str
    key_id: str
    agent_id: str


@pytest.fixture
async def evm_agent(ctx: AppContext, http: httpx.AsyncClient) -> EvmAgent:
    api = await merchant_api(ctx, http)
    user = Account.create()
    await api.ok("POST", "/v1/faucet", {"wallet": user.address, "amount": "5"})
    agent = await api.ok("POST", "/v1/agents", {"name": "x402-agent"})
    key = await approved_evm_key(api, user, agent["id"], "1")
    return EvmAgent(api, agent["token"], key["id"], agent["id"])


async def books_equal_chain(ctx: AppContext, agent: EvmAgent) -> dict[str, Any]:
    status = await agent.merchant.ok("GET", f"/v1/session-keys/{agent.key_id}")
    adapter = ctx.chains.get("evm-local")
    on_chain = await adapter.balance(status["session_key_address"], adapter.token("USDC"))
    books = D(status["remaining_amount"]) + D(status["held_amount"])
    assert D(on_chain) / 10**6 == books, (on_chain, status)
    return status


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pay_x402_pays_the_reference_resource_books_equal_chain(
        ctx: AppContext, served: str, evm_agent: EvmAgent, transport: str) -> None:
    adapter = ctx.chains.get("evm-local")
    pay_to = Account.create().address
    async with x402_resource_server(adapter, pay_to=pay_to,  # type: ignore[arg-type]
                                    amount_base_units=PRICE) as url, \
            connect(transport, served, evm_agent.token) as mcp:
        too_dear = await mcp.call("pay_x402", url=str(url), session_key_id=evm_agent.key_id,
                                  max_amount="0.005")
        assert too_dear.error and too_dear.code == "x402_max_amount_exceeded", too_dear.body
        assert D(too_dear.body["required"]) == D("0.01")
        assert url.settlements == []  # nothing was signed, nothing reached the facilitator

        paid = await mcp.call("pay_x402", url=str(url), session_key_id=evm_agent.key_id,
                              max_amount="0.05")
        assert not paid.error, paid.body
        assert paid.body["status_code"] == 200
        assert paid.body["content_type"].startswith("application/json")
        assert RESOURCE_BODY["forecast"] in paid.body["body"]
        payment = paid.body["payment"]
        assert payment["status"] == "succeeded" and D(payment["amount"]) == D("0.01")
        assert payment["pay_to"] == pay_to and payment["network"] == "eip155:31337"
        [settled] = url.settlements
        assert settled.success and settled.transaction == payment["settlement_tx"]

        got = await mcp.call("get_payment", payment_id=payment["id"])
        assert not got.error and got.body["status"] == "succeeded"
        free = await mcp.call("pay_x402", url=str(url).replace("/paid", "/free"),
                              session_key_id=evm_agent.key_id, max_amount="0.05")
        assert not free.error and free.body["payment"] is None
        assert free.body["status_code"] == 200

    # Books == chain: the merchant holds on chain what zpay paid; the wallet what is left.
    assert await adapter.balance(pay_to, adapter.token("USDC")) == PRICE
    status = await books_equal_chain(ctx, evm_agent)
    assert D(status["spent_amount"]) == D("0.01") and D(status["held_amount"]) == 0
