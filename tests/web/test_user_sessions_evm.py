"""The same promise on evm-local (a real anvil): a MetaMask-like wallet found through EIP-6963
signs an EIP-4361 message with `personal_sign`, the user sees the key it funded, revokes
it, the agent is refused at once and the remainder returns to the wallet on chain."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from playwright.async_api import BrowserContext, expect

from tests.support import merchant_api
from tests.web.fake_wallets import FakeEvmWallet, FakeSolanaWallet, install
from tests.web.test_user_sessions import (
    funded_key,
    pay,
    revoke_through_the_page,
    revoked_event,
    sign_in_through_the_page,
)
from tests.web.test_user_signin import challenge, refused, submit
from zpay.client.wallet import EvmWallet
from zpay.domain import signin
from zpay.jobs.refunds import run_refunds
from zpay.services.context import AppContext
from zpay.settings import Settings

USDC = 10**6
HTTP_TIMEOUT_S = 60  # the `http` fixture's: these wait on a chain


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local", "evm-local"))


def personal_sign(account: object, message: str) -> str:
    signed = Account.sign_message(encode_defunct(text=message), account.key)  # type: ignore[attr-defined]
    return str(signed.signature.to_0x_hex())


async def test_evm_user_signs_in_with_eip4361_and_revokes(
        ctx: AppContext, http: httpx.AsyncClient, served: str,
        page_context: BrowserContext) -> None:
    adapter = ctx.chains.get("evm-local")
    usdc = adapter.token("USDC")
    wallet = FakeEvmWallet()
    user = EvmWallet(bytes(wallet.account.key))
    await adapter.faucet(user.address, usdc, 100 * USDC)
    shop = await merchant_api(ctx, http, "Acme Outdoor")
    agent, key = await funded_key(shop, user, "trip-planner", "40", chain="evm-local")
    recipient = Account.create().address
    assert (await pay(shop, agent, key["id"], "12.5", recipient))["status"] == "succeeded"

    # both kinds of wallet are offered; the EVM one signs in
    await install(page_context, FakeSolanaWallet(), wallet)
    page = await page_context.new_page()
    await sign_in_through_the_page(page, served, "Fake MetaMask")
    assert wallet.calls[-2:] == ["eth_requestAccounts", "personal_sign"]
    await expect(page.get_by_test_id("signed-in-wallet")).to_have_text(
        f"{user.address[:4]}…{user.address[-4:]}")
    card = page.locator(f"article#{key['id']}")
    await expect(card.get_by_test_id("remaining")).to_have_text("27.50USDC")
    await expect(card.locator("tr[data-payment] td").nth(1).locator(".mono")
                 ).to_have_attribute("title", recipient)

    await revoke_through_the_page(page, key["id"])
    again = await shop.as_(agent["token"]).pay(key["id"], "1", recipient)
    assert (again.status_code, again.json()["code"]) == (402, "session_key_revoked")
    assert (await revoked_event(shop, key["id"]))["revoked_by"] == "user"

    before = await adapter.balance(user.address, usdc)
    assert await run_refunds(ctx) == 1
    assert await adapter.balance(user.address, usdc) == before + 27_500_000
    assert await adapter.balance(key["session_key_address"], usdc) == 0


async def test_evm_sign_in_refusals(http: httpx.AsyncClient, served: str) -> None:
    user, other = Account.create(), Account.create()
    issued = await challenge(http, user.address.lower(), family="evm")  # as MetaMask gives it
    parsed = signin.parse(issued["message"])
    assert (parsed.address, parsed.chain_id) == (user.address, "31337")  # EIP-55, anvil's id
    assert issued["message"].startswith(
        f"{served.removeprefix('http://')} wants you to sign in with your Ethereum account:\n")

    refused(await submit(http, issued["message"], personal_sign(other, issued["message"])), 401,
            "signin_signature_invalid")
    lower = issued["message"].replace(user.address, user.address.lower())
    refused(await submit(http, lower, personal_sign(user, lower)), 401,
            "signin_signature_invalid")  # EIP-4361 wants the EIP-55 form
    ok = await submit(http, issued["message"], personal_sign(user, issued["message"]))
    assert ok.status_code == 200 and ok.json()["wallet"] == user.address
    http.cookies.clear()
    refused(await submit(http, issued["message"], personal_sign(user, issued["message"])), 401,
            "signin_nonce_used")
    mainnet = dataclasses.replace(parsed, chain_id="1").text()
    refused(await submit(http, mainnet, personal_sign(user, mainnet)), 401,
            "signin_chain_unsupported")
