"""Impossible EVM recipients (the session wallet, the token contract, the relayer, the zero
address) are refused before anything is held, and `allowed_recipients` are checked against
the session's chains."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from solders.keypair import Keypair
from sqlalchemy import func, select

from tests.integration.test_evm_lifecycle import approved_evm_key
from tests.support import merchant_api
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.models import Payment, PaymentAttempt

ZERO = "0x" + "00" * 20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local", "evm-local"))


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


async def _rows(ctx: AppContext) -> tuple[int, int]:
    async with ctx.db.sessions() as s:
        return ((await s.execute(select(func.count()).select_from(Payment))).scalar_one(),
                (await s.execute(select(func.count()).select_from(PaymentAttempt))).scalar_one())


async def test_impossible_evm_recipients(ctx: AppContext, http: httpx.AsyncClient) -> None:
    api = await merchant_api(ctx, http)
    adapter: Any = ctx.chains.get("evm-local")
    user = Account.create()
    await api.ok("POST", "/v1/faucet", {"wallet": user.address, "amount": "10",
                                        "chain": "evm-local"})
    agent = await api.ok("POST", "/v1/agents", {"name": "evm"})
    key = await approved_evm_key(api, user, agent["id"], "5")
    me = api.as_(agent["token"])
    wallet = key["session_key_address"]
    before = await _rows(ctx)
    impossible = {"the session wallet": wallet, "the same, lower case": wallet.lower(),
                  "the token contract": adapter.token("USDC").address,
                  "the relayer": adapter.relayer_address}
    for what, recipient in impossible.items():
        resp = await me.pay(key["id"], "1", recipient)
        assert (resp.status_code, resp.json()["code"]) == (422, "invalid_recipient"), (
            what, resp.text)
    resp = await me.pay(key["id"], "1", ZERO)  # not an address that can hold funds at all
    assert (resp.status_code, resp.json()["code"]) == (422, "invalid_address")
    assert await _rows(ctx) == before

    # allowed_recipients: addresses of the session's chains, stored canonical.
    merchant = Account.create().address
    evm_only = {"agent_id": agent["id"], "allowed_chains": ["evm-local"]}
    ok = await api.ok("POST", "/v1/sessions", {**evm_only,
                                               "allowed_recipients": [merchant.lower()]})
    assert ok["allowed_recipients"] == [merchant]
    resp = await api.post("/v1/sessions", {**evm_only,
                                           "allowed_recipients": [str(Keypair().pubkey())]})
    assert (resp.status_code, resp.json()["code"]) == (422, "invalid_recipient")
    both = await api.ok("POST", "/v1/sessions", {
        "agent_id": agent["id"], "allowed_recipients": [merchant, str(Keypair().pubkey())]})
    assert both["allowed_recipients"][0] == merchant
    await api.ok("POST", f"/v1/session-keys/{key['id']}/link", {"session_id": ok["id"]})
    resp = await me.pay(key["id"], "1", merchant)  # the lower-case entry matches
    assert resp.status_code == 201, resp.text
