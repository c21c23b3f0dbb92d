"""The hosted approval page on solana-local, in a real browser with a Wallet Standard wallet:
what the user approves is shown and checked against the bytes before anything is signed;
the approval funds the key (books == chain); every refusal leaves the wallet unasked."""

from __future__ import annotations

import asyncio
import base64
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Route, expect
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from tests.web.approval_support import (
    TIMEOUT_MS,
    approve,
    books_equal_chain,
    change_transaction,
    connect,
    local,
    open_page,
    refused_to_sign,
    setup_key,
    still_pending,
)
from tests.web.fake_wallets import FakeSolanaWallet, install
from zpay.client.wallet import SolanaWallet
from zpay.services import approval_links
from zpay.services.context import AppContext


async def test_fund_a_key_through_the_page(ctx: AppContext, served: str, browser: Browser,
                                           page_context: BrowserContext,
                                           screenshots: Path) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        assert key["approval_url"].startswith(f"{ctx.settings.base_url}/approve/")
        assert key["approval"]["approval_url"] == key["approval_url"]
        page = await open_page(page_context, served, key["approval_url"], wallet)

        # Before anything is signed: the words, checked against the transaction's bytes.
        await expect(page.get_by_test_id("check")).to_have_class("check ok", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("check")).to_contain_text("exactly 25.00 USDC")
        await expect(page.get_by_test_id("amount")).to_have_text("25.00USDC")
        await expect(page.get_by_test_id("merchant")).to_have_text("Acme Books")
        await expect(page.get_by_test_id("agent")).to_have_text("Reading-list agent")
        await expect(page.get_by_test_id("session-wallet")).to_have_text(
            key["session_key_address"])
        await expect(page.get_by_test_id("user-wallet")).to_have_text(wallet.address)
        limits = page.get_by_test_id("limits")
        for text in ("Per payment", "at most 5.00 USDC", "Per day", "at most 10.00 USDC",
                     "Per week", "at most 20.00 USDC", "Per month", "at most 25.00 USDC"):
            await expect(limits).to_contain_text(text)
        await expect(page.get_by_test_id("expiry")).to_contain_text("(in 7 days)")
        await expect(page.locator("body")).to_contain_text("Paid by zpay. You need no SOL.")
        await expect(page.get_by_test_id("refund-promise")).to_be_visible()
        await expect(page.locator("body")).to_contain_text("Local Solana test network")
        assert wallet.calls == []
        await page.screenshot(path=screenshots / "approval-before-sign.png", full_page=True)

        await approve(page, "Fake Phantom")
        assert wallet.calls == ["connect", "signTransaction"]
        status = await books_equal_chain(api, ctx, key["id"], "25")
        await expect(page.get_by_test_id("tx-id")).not_to_be_empty()
        await expect(page.locator("body")).to_contain_text("has no public explorer")
        assert status["remaining_amount"] == "25.000000"
        await page.screenshot(path=screenshots / "approval-activated.png", full_page=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_phone_width(ctx: AppContext, served: str, browser: Browser,
                           screenshots: Path) -> None:
    wallet = FakeSolanaWallet()
    phone = await browser.new_context(viewport={"width": 390, "height": 844},
                                      device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        async with httpx.AsyncClient(base_url=served, timeout=60) as http:
            _, _, key = await setup_key(ctx, http, wallet.address)
            page = await open_page(phone, served, key["approval_url"], wallet)
            await connect(page, "Fake Phantom")
            await expect(page.get_by_test_id("approve")).to_be_enabled(timeout=TIMEOUT_MS)
            # Nothing is wider than the phone.
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            await page.screenshot(path=screenshots / "approval-phone.png", full_page=True)
    finally:
        await phone.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_wrong_account_signs_nothing(ctx: AppContext, served: str,
                                           page_context: BrowserContext) -> None:
    user, other = FakeSolanaWallet(), FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, user.address)
        page = await open_page(page_context, served, key["approval_url"], other)
        await connect(page, "Fake Phantom")
        await expect(page.get_by_test_id("wrong-account")).to_contain_text(
            f"This approval is for the wallet {user.address}")
        await expect(page.get_by_test_id("approve")).to_be_hidden()
        assert other.calls == ["connect"]
        await still_pending(api, key)


# ------------------------------------------------------------------ the link


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_expired_link_shows_nothing_to_sign(ctx: AppContext, served: str,
                                                  page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        _, _, key = await setup_key(ctx, http, wallet.address)
        past = ctx.now() - timedelta(seconds=1)
        link = approval_links.mint(ctx, key["id"], key["approval"]["id"], past)
        page = await open_page(page_context, served, f"/approve/{link}", wallet)
        await expect(page.get_by_test_id("link-expired")).to_contain_text(
            "Ask Acme Books for a fresh approval link")
        assert await page.get_by_test_id("approve").count() == 0
        for path in ("", "/transaction", "/status"):
            resp = await http.get(f"/approve/{link}{path}")
            assert resp.status_code == 410, (path, resp.text)
        resp = await http.post(f"/approve/{link}/submit", json={"signed_transaction": "AA=="})
        assert (resp.status_code, resp.json()["code"]) == (410, "approval_link_expired")
    assert wallet.calls == []


def _tampered(link: str) -> list[str]:
    body, tag = link.split(".")
    other_ids = base64.urlsafe_b64encode(b"skey_0.apr_0.9999999999").rstrip(b"=").decode()
    flipped = tag[:-2] + ("A" if tag[-2] != "A" else "B") + tag[-1]
    return [f"{body}.{flipped}", f"{other_ids}.{tag}", body, f"{body}x.{tag}", "nonsense"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_tampered_link_is_not_a_link(ctx: AppContext, served: str,
                                           page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        link = urlsplit(key["approval_url"]).path.rsplit("/", 1)[1]
        await install(page_context, wallet)
        page = await page_context.new_page()
        for bad in _tampered(link):
            resp = await page.goto(f"{served}/approve/{bad}")
            assert resp is not None and resp.status == 404
            await expect(page.get_by_test_id("link-invalid")).to_be_visible()
            assert await page.get_by_test_id("approve").count() == 0
            signed = SolanaWallet(wallet.keypair).sign_approval(key)
            for path, method in (("/transaction", "GET"), ("/submit", "POST"),
                                 ("/renew", "POST"), ("/faucet", "POST")):
                resp2 = await http.request(method, f"/approve/{bad}{path}",
                                           json=signed if method == "POST" else None)
                assert (resp2.status_code, resp2.json()["code"]) == (
                    404, "approval_link_invalid"), (bad, path)
        assert wallet.calls == []
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["status"], status["funded_amount"]) == ("pending_approval", "0.000000")


async def test_the_page_is_locked_down(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        _, _, key = await setup_key(ctx, http, FakeSolanaWallet().address, fund=None,
                                    merchant="Bob's <script>alert(1)</script> shop")
        resp = await http.get(urlsplit(key["approval_url"]).path)
    assert resp.status_code == 200
    assert "Bob&#39;s &lt;script&gt;alert(1)&lt;/script&gt; shop" in resp.text
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["cache-control"] == "no-store"
    assert "<script>" not in resp.text and " style=" not in resp.text  # nothing inline


# ------------------------------------------------------------------ words vs bytes


TRANSFER_CHECKED = 12


def _manipulate(raw: bytes, how: str, key: dict[str, Any]) -> bytes:
    amount = struct.pack("<Q", 25 * 10**6)
    if how == "amount":
        return raw.replace(bytes([TRANSFER_CHECKED]) + amount,
                           bytes([TRANSFER_CHECKED]) + struct.pack("<Q", 900 * 10**6))
    if how == "destination":
        account = bytes(Pubkey.from_string(key["session_token_account"]))
        return raw.replace(account, bytes(Keypair().pubkey()))
    assert how == "fee_payer"
    return raw.replace(bytes(Pubkey.from_string(key["fee_payer"])),
                       bytes(Pubkey.from_string(key["user_wallet"])))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("how", ["amount", "destination", "fee_payer"])
async def test_a_manipulated_transaction_is_never_offered_to_sign(
        ctx: AppContext, served: str, page_context: BrowserContext, how: str) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)

        def manipulated(body: dict[str, Any]) -> None:
            raw = base64.b64decode(body["approval_transaction"])
            changed = _manipulate(raw, how, key)
            assert changed != raw
            body["approval_transaction"] = base64.b64encode(changed).decode()

        await change_transaction(page_context, manipulated)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await refused_to_sign(page, {
            "amount": "moves 900.00 USDC, not the 25.00 USDC shown",
            "destination": "another account than the session wallet's",
            "fee_payer": "the network fee would not be paid by zpay"}[how])
        assert await page.get_by_role("button", name="Connect Fake Phantom").count() == 0
        assert wallet.calls == []
        await still_pending(api, key)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_words_that_differ_from_the_bytes_are_refused(
        ctx: AppContext, served: str, page_context: BrowserContext) -> None:
    """The other way round: the page's words altered (here the amount shown), the bytes
    intact — the script compares the two and refuses just the same."""
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        _, _, key = await setup_key(ctx, http, wallet.address)

        async def reword(route: Route) -> None:
            response = await route.fetch()
            html = (await response.text()).replace('25.00<span class="unit">',
                                                   '2.50<span class="unit">')
            await route.fulfill(response=response, body=html)

        await page_context.route("**/approve/*", reword)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await expect(page.get_by_test_id("amount")).to_have_text("2.50USDC")
        await expect(page.get_by_test_id("mismatch")).to_contain_text(
            "the amount shown differs", timeout=TIMEOUT_MS)
        assert await page.get_by_test_id("approve").count() == 0
        assert wallet.calls == []


# ------------------------------------------------------------------ outcomes


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rejected_in_the_wallet_then_approved(ctx: AppContext, served: str,
                                                    page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await connect(page, "Fake Phantom")
        wallet.reject = True
        await page.get_by_test_id("approve").click()
        await expect(page.get_by_test_id("rejected")).to_contain_text(
            "You declined in your wallet. Nothing was signed")
        await still_pending(api, key)
        wallet.reject = False
        await page.get_by_test_id("approve").click()
        await expect(page.get_by_test_id("activated")).to_be_visible(timeout=TIMEOUT_MS)
        await books_equal_chain(api, ctx, key["id"], "25")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_insufficient_funds_then_the_faucet(ctx: AppContext, served: str,
                                                  page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address, fund=None)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await connect(page, "Fake Phantom")
        await page.get_by_test_id("approve").click()
        await expect(page.get_by_test_id("error-approval_rejected")).to_contain_text(
            "does your wallet hold 25.00 USDC? Nothing moved.", timeout=TIMEOUT_MS)
        await page.get_by_role("button", name="Get 25.00 test USDC").click()
        await expect(page.get_by_test_id("faucet-done")).to_contain_text("holds 25.00 USDC")
        await page.get_by_role("button", name="Try again").click()
        await expect(page.get_by_test_id("activated")).to_be_visible(timeout=TIMEOUT_MS)
        await books_equal_chain(api, ctx, key["id"], "25")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_lapsed_approval_is_renewed_from_the_page(ctx: AppContext, served: str,
                                                        page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await connect(page, "Fake Phantom")
        ctx.chains.get("solana-local").advance_blockhash()  # type: ignore[attr-defined]
        await page.get_by_test_id("approve").click()
        await expect(page.get_by_test_id("error-approval_expired")).to_contain_text(
            "expired before it reached the network", timeout=TIMEOUT_MS)
        async with page.expect_navigation():
            await page.get_by_role("button", name="Ask for a fresh approval").click()
        # The same link now shows the fresh approval: checked, signed, active.
        await approve(page, "Fake Phantom")
        await books_equal_chain(api, ctx, key["id"], "25")
        assert wallet.calls.count("signTransaction") == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_pending_confirmation_shows_progress_until_active(
        ctx: AppContext, served: str, page_context: BrowserContext) -> None:
    """`202 approval_pending` (the chain had not confirmed within the request): the page
    says it is in progress and polls until the key is active."""
    wallet = FakeSolanaWallet()
    released = asyncio.Event()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)

        async def slow_chain(route: Route) -> None:
            await route.fetch()  # the submission really happens…
            await route.fulfill(status=202, content_type="application/problem+json", json={
                "status": 202, "code": "approval_pending",
                "detail": "the key activates once the chain confirms it"})

        async def still_pending(route: Route) -> None:
            if released.is_set():
                await route.continue_()
            else:
                await route.fulfill(json={"state": "submitting"})

        await page_context.route("**/approve/*/submit", slow_chain)
        await page_context.route("**/approve/*/status", still_pending)
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await connect(page, "Fake Phantom")
        await page.get_by_test_id("approve").click()
        await expect(page.get_by_test_id("progress")).to_contain_text(
            "Waiting for the network to confirm", timeout=TIMEOUT_MS)
        released.set()
        await expect(page.get_by_test_id("activated")).to_be_visible(timeout=TIMEOUT_MS)
        await books_equal_chain(api, ctx, key["id"], "25")


async def test_top_up_through_its_approval_url(ctx: AppContext, served: str,
                                               page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        await api.ok("POST", f"/v1/session-keys/{key['id']}/approval",
                     SolanaWallet(wallet.keypair).sign_approval(key))
        top_up = await api.ok("POST", f"/v1/session-keys/{key['id']}/top-ups",
                              {"amount": "10"})
        assert top_up["approval_url"] != key["approval_url"]
        page = await open_page(page_context, served, top_up["approval_url"], wallet)
        await expect(page.locator("body")).to_contain_text("Acme Books asks you to top up")
        await expect(page.get_by_test_id("amount")).to_have_text("10.00USDC")
        await approve(page, "Fake Phantom")
        await expect(page.locator("h1")).to_have_text("Top-up confirmed")
        status = await books_equal_chain(api, ctx, key["id"], "35")
        assert status["remaining_amount"] == "35.000000"
        # The funding link now answers what happened to it, and offers nothing to sign.
        await page.goto(local(served, key["approval_url"]))
        await expect(page.get_by_test_id("activated")).to_be_visible()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_revoked_key_has_nothing_to_approve(ctx: AppContext, served: str,
                                                    page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
        page = await open_page(page_context, served, key["approval_url"], wallet)
        await expect(page.get_by_test_id("closed")).to_contain_text(
            "This session key is revoked: there is nothing left to approve")
        assert await page.get_by_test_id("wallet-card").count() == 0
        resp = await http.post(f"{urlsplit(key['approval_url']).path}/submit",
                               json=SolanaWallet(wallet.keypair).sign_approval(key))
        assert resp.json()["code"] == "session_key_not_live"
    assert wallet.calls == []
