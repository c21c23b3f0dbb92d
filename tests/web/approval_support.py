"""Shared by the approval page tests: a merchant's set-up through the API, the page opened
in the browser with fake wallets, and the books compared with the chain."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from playwright.async_api import BrowserContext, Page, Route, expect

from tests.support import Api, merchant_api
from tests.web.fake_wallets import Wallet, install
from zpay.services.context import AppContext

TIMEOUT_MS = 30_000


async def setup_key(ctx: AppContext, http: httpx.AsyncClient, user_wallet: str, *,
                    chain: str = "solana-local", amount: str = "25", fund: str | None = "100",
                    method: str | None = None, limits: bool = True,
                    merchant: str = "Acme Books") -> tuple[Api, dict[str, Any], dict[str, Any]]:
    """A merchant, an agent, a policy session and a key awaiting the user's approval of
    `amount` (the user holds `fund` test USDC). Returns (api, agent, key)."""
    api = await merchant_api(ctx, http, merchant)
    if fund is not None:
        await api.ok("POST", "/v1/faucet", {"wallet": user_wallet, "amount": fund,
                                            "chain": chain})
    agent = await api.ok("POST", "/v1/agents", {"name": "Reading-list agent"})
    body: dict[str, Any] = {"agent_id": agent["id"], "user_wallet": user_wallet,
                            "max_amount": amount, "chain": chain,
                            "expires_in_seconds": 7 * 86400}
    if limits:
        session = await api.ok("POST", "/v1/sessions", {
            "agent_id": agent["id"], "max_per_transaction": "5", "max_per_day": "10",
            "max_per_week": "20", "max_per_month": "25"})
        body["session_id"] = session["id"]
    if method is not None:
        body["approval_method"] = method
    key = await api.ok("POST", "/v1/session-keys", body)
    assert key["status"] == "pending_approval"
    return api, agent, key


def local(served: str, approval_url: str) -> str:
    """The link on the test server (the link names `ZPAY_PUBLIC_URL`, here a default)."""
    return served + urlsplit(approval_url).path


async def open_page(context: BrowserContext, served: str, approval_url: str,
                    *wallets: Wallet) -> Page:
    await install(context, *wallets)
    page = await context.new_page()
    await page.goto(local(served, approval_url))
    return page


async def connect(page: Page, wallet_name: str) -> None:
    await expect(page.get_by_test_id("check")).to_have_class("check ok", timeout=TIMEOUT_MS)
    await page.get_by_role("button", name=f"Connect {wallet_name}").click()


async def approve(page: Page, wallet_name: str) -> None:
    """discover → connect → sign → submit, and wait for the activated page."""
    await connect(page, wallet_name)
    await expect(page.get_by_test_id("approve")).to_be_enabled(timeout=TIMEOUT_MS)
    await page.get_by_test_id("approve").click()
    await expect(page.get_by_test_id("activated")).to_be_visible(timeout=TIMEOUT_MS)


async def still_pending(api: Api, key: dict[str, Any]) -> None:
    """Nothing was approved: the key still awaits the user's approval."""
    status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
    assert status["status"] == "pending_approval"


async def change_transaction(context: BrowserContext,
                             change: Callable[[dict[str, Any]], None]) -> None:
    """A tampering server: each `/transaction` answer reaches the page altered by `change`."""

    async def serve_changed(route: Route) -> None:
        response = await route.fetch()
        body = await response.json()
        change(body)
        await route.fulfill(response=response, json=body)

    await context.route("**/approve/*/transaction", serve_changed)


async def refused_to_sign(page: Page, reason: str) -> None:
    """The page found the bytes differ from its words: it says so, and why, and offers
    nothing to sign."""
    check = page.get_by_test_id("mismatch")
    await expect(check).to_contain_text("Do not sign", timeout=TIMEOUT_MS)
    await expect(check).to_contain_text(reason)
    assert await page.get_by_test_id("approve").count() == 0


async def books_equal_chain(api: Api, ctx: AppContext, key_id: str,
                            funded: str) -> dict[str, Any]:
    """The key is active, funded as asked, and its session wallet holds on chain exactly
    what the books say is left."""
    status = await api.ok("GET", f"/v1/session-keys/{key_id}")
    adapter = ctx.chains.get(status["chain"])
    on_chain = await adapter.balance(status["session_key_address"],
                                     adapter.token(status["token"]))
    assert status["status"] == "active", status
    assert Decimal(status["funded_amount"]) == Decimal(funded), status
    in_books = Decimal(status["remaining_amount"]) + Decimal(status["held_amount"])
    assert on_chain == in_books.scaleb(status["decimals"]), (on_chain, status)
    return status
