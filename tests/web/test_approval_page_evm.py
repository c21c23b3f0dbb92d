"""The hosted approval page on evm-local (a real anvil) with an EIP-6963 wallet: the EIP-3009
typed data and the EIP-1559 fallback (signed by the wallet, or sent by it as MetaMask does),
each decoded and checked by the page before the wallet is asked; books == chain after."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, expect

from tests.web.approval_support import (
    TIMEOUT_MS,
    approve,
    books_equal_chain,
    change_transaction,
    connect,
    open_page,
    refused_to_sign,
    setup_key,
    still_pending,
)
from tests.web.fake_wallets import FakeEvmWallet
from zpay.domain.money import display_amount
from zpay.services.context import AppContext
from zpay.settings import Settings

SIGNING = {"eth_signTypedData_v4", "eth_signTransaction", "eth_sendTransaction", "personal_sign"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local", "evm-local"))


def _wallet(ctx: AppContext, **options: Any) -> FakeEvmWallet:
    return FakeEvmWallet(rpc_url=ctx.chains.get("evm-local").rpc_url,  # type: ignore[attr-defined]
                         **options)


async def test_fund_with_eip3009_typed_data(ctx: AppContext, served: str,
                                            page_context: BrowserContext) -> None:
    wallet = _wallet(ctx)
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address, chain="evm-local",
                                      limits=False)
        assert key["approval"]["format"] == "eip712"
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await expect(page.get_by_test_id("check")).to_contain_text(
            "exactly 25.00 USDC", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("limits")).to_contain_text(
            "At most what is in the session wallet; no other limit.")
        await expect(page.locator("body")).to_contain_text("Paid by zpay. You need no ETH.")
        await expect(page.locator("body")).to_contain_text("Local EVM test chain (anvil)")
        await approve(page, "Fake MetaMask")
        assert [c for c in wallet.calls if c in SIGNING] == ["eth_signTypedData_v4"]
        await books_equal_chain(api, ctx, key["id"], "25")
        adapter = ctx.chains.get("evm-local")
        assert await adapter.balance(wallet.address, adapter.token("USDC")) == 75 * 10**6


async def _fund_with_the_fallback(ctx: AppContext, served: str, page_context: BrowserContext,
                                  wallet: FakeEvmWallet) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address, chain="evm-local",
                                      method="transaction", fund=None)
        assert key["approval"]["format"] == "evm_transaction"
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await expect(page.get_by_test_id("check")).to_have_class("check ok", timeout=TIMEOUT_MS)
        tx = key["approval"]["unsigned_transaction"]
        max_fee_wei = int(tx["gas"], 16) * int(tx["maxFeePerGas"], 16)
        shown = display_amount(-(-max_fee_wei // 10**12), decimals=6)  # rounded up
        await expect(page.get_by_test_id("max-fee")).to_have_text(shown)
        await expect(page.locator("body")).to_contain_text("You pay the gas of this one transfer")
        await page.get_by_role("button", name="Get 25.00 test USDC").click()
        await expect(page.get_by_test_id("faucet-done")).to_be_visible(timeout=TIMEOUT_MS)
        await approve(page, "Fake MetaMask")
        await books_equal_chain(api, ctx, key["id"], "25")


async def test_fund_with_the_eip1559_fallback(ctx: AppContext, served: str,
                                              page_context: BrowserContext) -> None:
    """The transaction form: the user pays its gas (the page's faucet gives test ETH too)."""
    wallet = _wallet(ctx)
    await _fund_with_the_fallback(ctx, served, page_context, wallet)
    assert [c for c in wallet.calls if c in SIGNING] == ["eth_signTransaction"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_fallback_with_a_wallet_that_only_sends(ctx: AppContext, served: str,
                                                      page_context: BrowserContext) -> None:
    """A wallet without eth_signTransaction (MetaMask) broadcasts the transaction itself;
    the page reads the signed transaction back and zpay checks it all the same."""
    wallet = _wallet(ctx, sign_transaction_supported=False)
    await _fund_with_the_fallback(ctx, served, page_context, wallet)
    used = [c for c in wallet.calls if c in SIGNING]
    assert used == ["eth_signTransaction", "eth_sendTransaction"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_wrong_account_signs_nothing(ctx: AppContext, served: str,
                                           page_context: BrowserContext) -> None:
    user, other = _wallet(ctx), _wallet(ctx)
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, user.address, chain="evm-local")
        page = await open_page(page_context, served, key["approval_url"], other)
        await connect(page, "Fake MetaMask")
        await expect(page.get_by_test_id("wrong-account")).to_contain_text(
            f"This approval is for the wallet {key['user_wallet']}")
        await expect(page.get_by_test_id("approve")).to_be_hidden()
        assert not SIGNING & set(other.calls)
        await still_pending(api, key)


def _manipulate(body: dict[str, Any], how: str, thief: str) -> None:
    if how == "typed_data_to":
        body["typed_data"]["message"]["to"] = thief
    elif how == "typed_data_chain":
        body["typed_data"]["domain"]["chainId"] = 1
    elif how == "typed_data_value":
        body["typed_data"]["message"]["value"] = str(10**12)
    else:
        assert how == "calldata_recipient"
        tx = body["unsigned_transaction"]
        tx["data"] = tx["data"][:34] + thief[2:].lower() + tx["data"][74:]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("how", ["typed_data_to", "typed_data_chain", "typed_data_value",
                                 "calldata_recipient"])
async def test_a_manipulated_approval_is_never_offered_to_sign(
        ctx: AppContext, served: str, page_context: BrowserContext, how: str) -> None:
    wallet, thief = _wallet(ctx), _wallet(ctx).address
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(
            ctx, http, wallet.address, chain="evm-local",
            method="transaction" if how.startswith("calldata") else None)
        await change_transaction(page_context, lambda body: _manipulate(body, how, thief))
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await refused_to_sign(page, {
            "typed_data_to": "another address than the session wallet",
            "typed_data_chain": "it is for another network",
            "typed_data_value": "moves 1,000,000.00 USDC, not the 25.00 USDC shown",
            "calldata_recipient": "another address than the session wallet"}[how])
        assert wallet.calls == []
        await still_pending(api, key)
