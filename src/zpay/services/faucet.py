"""Test funds for a user wallet on local networks (demos and tests); refused elsewhere."""

from __future__ import annotations

from typing import Any

from zpay.domain.errors import InvalidRequest
from zpay.domain.money import parse_amount
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.views import amount as fmt


async def drip(ctx: AppContext, principal: Principal, wallet: str, amount_text: str,
               chain: str | None, token_symbol: str) -> dict[str, Any]:
    principal.require_merchant("use the faucet")
    adapter = ctx.chains.get(chain or ctx.settings.default_chain)
    if not adapter.network.local:
        raise InvalidRequest("the faucet exists only on local networks", code="faucet_not_local")
    token = ctx.chains.token(adapter.network.name, token_symbol)
    value = parse_amount(amount_text, decimals=token.decimals, max_base_units=10**15)
    address = adapter.validate_address(wallet)
    receipt = await adapter.faucet(address, token, value)
    balance = await adapter.balance(address, token)
    return {"object": "faucet_drip", "chain": adapter.network.name, "wallet": address,
            "amount": fmt(value, token.decimals), "balance": fmt(balance, token.decimals),
            "tx_id": receipt.tx_id}
