"""The harness itself: x402's own client, with a local key, pays x402's own resource server,
whose facilitator settles on anvil. If this fails, nothing about zpay is in question."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from eth_account import Account

from tests.x402.reference import reference_client
from tests.x402.support import RESOURCE_BODY, x402_resource_server
from zpay.services.context import AppContext


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_reference_client_pays_reference_server(ctx: AppContext) -> None:
    adapter = ctx.chains.get("evm-local")
    usdc = adapter.token("USDC")
    payer, merchant = Account.create(), Account.create()
    await adapter.faucet(payer.address, usdc, 1_000_000)
    async with x402_resource_server(adapter, pay_to=merchant.address,  # type: ignore[arg-type]
                                    amount_base_units=10_000) as url:
        async with httpx.AsyncClient(timeout=30) as plain:
            first = await plain.get(url)
        assert first.status_code == 402
        required = json.loads(base64.b64decode(first.headers["PAYMENT-REQUIRED"]))
        assert required["x402Version"] == 2
        [accept] = required["accepts"]
        assert (accept["scheme"], accept["amount"], accept["payTo"]) == (
            "exact", "10000", merchant.address)
        async with reference_client(payer, url.network, timeout=30) as client:
            paid = await client.get(url)
        assert paid.status_code == 200, paid.text
        assert paid.json() == RESOURCE_BODY
        assert "PAYMENT-RESPONSE" in paid.headers
        assert [s.success for s in url.settlements] == [True]
    assert await adapter.balance(merchant.address, usdc) == 10_000
    assert await adapter.balance(payer.address, usdc) == 990_000
