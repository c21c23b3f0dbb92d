"""A user in a real browser (Debian chromium): sign in with the wallet on /me, see every key
it funded on any merchant and nothing else, revoke one — the agent is refused at once and
the remainder lands back in the wallet (read from the chain).

The fake wallets (tests/web/fake_wallets.py) sign in Python; the page's own code runs:
wallet discovery (Wallet Standard / EIP-6963) → connect → signMessage / personal_sign →
submit. Screenshots: docs/screenshots/user-sessions.png and user-sessions-phone.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import BrowserContext, Page, Route, expect
from solders.keypair import Keypair

from tests.support import Api, merchant_api
from tests.web.fake_wallets import FakeSolanaWallet, install
from zpay.client.wallet import EvmWallet, SolanaWallet
from zpay.jobs.refunds import run_refunds
from zpay.services.context import AppContext

USDC = 10**6
HTTP_TIMEOUT_S = 60  # the `http` fixture's: these wait on a chain


async def funded_key(api: Api, signer: SolanaWallet | EvmWallet, agent_name: str,
                     max_amount: str, chain: str = "solana-local") -> tuple[dict[str, Any],
                                                                            dict[str, Any]]:
    """An agent and an active key funded by `signer`'s approval. (agent, key status)"""
    agent = await api.ok("POST", "/v1/agents", {"name": agent_name})
    key = await api.ok("POST", "/v1/session-keys", {
        "agent_id": agent["id"], "user_wallet": signer.address, "max_amount": max_amount,
        "chain": chain, "expires_in_seconds": 7 * 24 * 3600})
    status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval",
                          signer.sign_approval(key))
    assert status["status"] == "active"
    return agent, status


async def pay(api: Api, agent: dict[str, Any], key_id: str, amount: str, recipient: str,
              description: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"session_key_id": key_id, "amount": amount, "recipient": recipient}
    if description:
        body["description"] = description
    return await api.as_(agent["token"]).ok("POST", "/v1/payments", body,
                                            **{"Idempotency-Key": f"{key_id}-{amount}"})


async def sign_in_through_the_page(page: Page, served: str, wallet_name: str) -> None:
    await page.goto(f"{served}/me")
    await expect(page).to_have_url(f"{served}/me/sign-in")  # not signed in yet
    await page.get_by_role("button", name=wallet_name).click()
    await page.wait_for_url(f"{served}/me")


async def revoke_through_the_page(page: Page, key_id: str) -> None:
    card = page.locator(f"article#{key_id}")
    await card.get_by_text("Revoke this key…").click()
    await card.get_by_role("button", name="Revoke and refund").click()
    await page.wait_for_url(f"**/me?revoked={key_id}*")
    await expect(page.get_by_test_id("revoked-notice")).to_be_visible()
    await expect(page.locator(f"article#{key_id}").get_by_test_id("status")).to_have_text(
        "Revoked")


async def revoked_event(api: Api, key_id: str) -> dict[str, Any]:
    events = await api.ok("GET", "/v1/events", object_id=key_id)
    [revoked] = [e for e in events["data"] if e["type"] == "session_key.revoked"]
    return dict(revoked["data"])


async def test_solana_user_signs_in_sees_only_their_keys_and_revokes(
        ctx: AppContext, http: httpx.AsyncClient, served: str, page_context: BrowserContext,
        screenshots: Path) -> None:
    adapter = ctx.chains.get("solana-local")
    usdc = adapter.token("USDC")
    wallet = FakeSolanaWallet()
    user = SolanaWallet(wallet.keypair)
    stranger = SolanaWallet.generate()
    for who in (user, stranger):
        await adapter.faucet(who.address, usdc, 1_000 * USDC)
    outdoor = await merchant_api(ctx, http, "Acme Outdoor")
    books = await merchant_api(ctx, http, "Paper & Ink Books")
    planner, trip = await funded_key(outdoor, user, "trip-planner", "200")
    reader, reading = await funded_key(books, user, "reading-bot", "50")
    _, theirs = await funded_key(outdoor, stranger, "someone-else", "75")
    shop_wallet = str(Keypair().pubkey())
    payments = [await pay(outdoor, planner, trip["id"], "19.99", shop_wallet,
                          "Campsite, 2 nights"),
                await pay(outdoor, planner, trip["id"], "5", shop_wallet, "Trail map")]
    await pay(books, reader, reading["id"], "12.5", str(Keypair().pubkey()), "Paperback")
    assert all(p["status"] == "succeeded" and p["tx_id"] for p in payments)

    await install(page_context, wallet)
    page = await page_context.new_page()
    await sign_in_through_the_page(page, served, "Fake Phantom")
    assert wallet.calls == ["connect", "signMessage"]

    # every key this wallet funded, with both merchants; nothing of the stranger's
    cards = page.locator("article.key-card")
    await expect(cards).to_have_count(2)
    assert set(await cards.evaluate_all("els => els.map(e => e.id)")) == {trip["id"],
                                                                          reading["id"]}
    assert theirs["id"] not in await page.content()
    card = page.locator(f"article#{trip['id']}")
    await expect(card.get_by_role("heading", level=2)).to_have_text("Acme Outdoor")
    await expect(card.get_by_test_id("remaining")).to_have_text("175.01USDC")
    await expect(card.get_by_test_id("funded")).to_have_text("200.00 USDC")
    await expect(card.get_by_test_id("spent")).to_have_text("24.99 USDC")
    rows = card.locator("tr[data-payment]")
    await expect(rows).to_have_count(2)
    for payment in payments:
        row = card.locator(f"tr[data-payment='{payment['id']}']")
        await expect(row.locator("td").nth(1).locator(".mono")).to_have_attribute(
            "title", shop_wallet)
        await expect(row.locator("td").nth(4).locator(".mono")).to_have_text(
            f"{payment['tx_id'][:6]}…{payment['tx_id'][-6:]}")
    await expect(card.get_by_text("Campsite, 2 nights")).to_be_visible()

    if "sqlite" in ctx.settings.database_url:  # one writer of the screenshots
        await page.screenshot(path=str(screenshots / "user-sessions.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=str(screenshots / "user-sessions-phone.png"), full_page=True)
        await page.set_viewport_size({"width": 1100, "height": 900})

    # another wallet's key is not found, by URL too
    resp = await page.goto(f"{served}/me/keys/{theirs['id']}")
    assert resp is not None and resp.status == 404
    await expect(page.get_by_test_id("error-code")).to_have_text("session_key_not_found")
    resp = await page.goto(f"{served}/me/keys/{trip['id']}")
    assert resp is not None and resp.status == 200
    await expect(page.locator(f"article#{trip['id']}")).to_be_visible()

    # revoke from the page: the agent's very next payment is refused
    await page.goto(f"{served}/me")
    await revoke_through_the_page(page, trip["id"])
    again = await outdoor.as_(planner["token"]).pay(trip["id"], "1", shop_wallet)
    assert (again.status_code, again.json()["code"]) == (402, "session_key_revoked")
    event = await revoked_event(outdoor, trip["id"])
    assert (event["revoked_by"], event["status"]) == ("user", "revoked")
    assert (await books.ok("GET", f"/v1/session-keys/{reading['id']}"))["status"] == "active"
    assert (await outdoor.ok("GET", f"/v1/session-keys/{theirs['id']}"))["status"] == "active"

    # the refund job returns the remainder to the user's wallet, as the chain shows
    before = await adapter.balance(user.address, usdc)
    assert await run_refunds(ctx) == 1
    assert await adapter.balance(user.address, usdc) == before + 175_010_000
    assert await adapter.balance(trip["session_key_address"], usdc) == 0
    await page.reload()
    refund = page.locator(f"article#{trip['id']}").get_by_test_id("refund")
    await expect(refund).to_contain_text("175.01 USDC returned to your wallet")
    await expect(page.locator(f"article#{trip['id']}").get_by_test_id("remaining")
                 ).to_have_text("0.00USDC")

    # a merchant's revocations say so too: of a key, and of its agent's keys on deletion
    await outdoor.ok("POST", f"/v1/session-keys/{theirs['id']}/revoke")
    assert (await revoked_event(outdoor, theirs["id"]))["revoked_by"] == "merchant"
    await books.ok("DELETE", f"/v1/agents/{reader['id']}")
    assert (await revoked_event(books, reading["id"]))["revoked_by"] == "merchant"


async def test_the_page_shows_refusals_and_signs_nothing_twice(
        ctx: AppContext, served: str, page_context: BrowserContext) -> None:
    wallet = FakeSolanaWallet()
    await install(page_context, wallet)
    page = await page_context.new_page()
    await page.goto(f"{served}/me/sign-in")
    status = page.locator("#signin-status")

    # declined in the wallet
    wallet.reject = True
    await page.get_by_role("button", name="Fake Phantom").click()
    await expect(status).to_have_attribute("data-code", "rejected")
    await expect(status).to_contain_text("You declined in the wallet")
    assert page.url == f"{served}/me/sign-in"
    wallet.reject = False

    # a message naming another site (as a phishing page would relay it) is signed by the
    # wallet but refused by zpay; the page says why and stays signed out
    async def other_domain(route: Route) -> None:
        answer = await route.fetch()
        body = await answer.json()
        body["message"] = body["message"].replace(served.removeprefix("http://"),
                                                  "zpay.evil.example", 1)
        await route.fulfill(response=answer, json=body)

    await page.route("**/me/sign-in/challenge", other_domain)
    await page.get_by_role("button", name="Fake Phantom").click()
    await expect(status).to_have_attribute("data-code", "signin_domain_mismatch")
    await expect(status).to_contain_text("not to")
    assert wallet.calls[-1] == "signMessage" and page.url == f"{served}/me/sign-in"
    await page.unroute("**/me/sign-in/challenge")
    await page.get_by_role("button", name="Fake Phantom").click()
    await page.wait_for_url(f"{served}/me")
    await expect(page.get_by_text("No session keys yet")).to_be_visible()

