"""The merchant dashboard in a real browser: every page and every action, on both databases.

Data is built through the HTTP API (tests/web/dashboard_support.py); the browser only reads
and clicks, and the API then shows that what was clicked really happened.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.async_api import BrowserContext, Page, expect

from tests.jobs.receivers import Loopback, ids
from tests.web.dashboard_support import build_shop, sign_in
from zpay.jobs.scheduler import run_once
from zpay.services.context import AppContext


async def test_session_key_page_shows_limits_and_live_usage(
        ctx: AppContext, served: str, http: httpx.AsyncClient, page: Page,
        page_context: BrowserContext, screenshots: Path, database_url: str) -> None:
    shop = await build_shop(ctx, http, "Northwind Travel")
    await sign_in(page, served, shop.secret_key)

    # overview: money first, the refusal listed
    hero = page.locator("section.hero").first
    await expect(hero).to_contain_text("457.50")  # 500 - 25 - 17.5
    await expect(hero).to_contain_text("42.50")  # paid in the last 24 h
    await expect(page.locator("body")).to_contain_text("per transaction limit")

    await page.click("nav.dash-tabs >> text=Session keys")
    await page.click(f"#session-keys tr[data-id='{shop.key['id']}'] a")
    await page.wait_for_url(f"{served}/dashboard/session-keys/{shop.key['id']}")

    await expect(page.locator("#remaining")).to_contain_text("457.50")
    # wallet: 42.5 of 500 used → 8 %; day: 42.5 of 100 → 42 %; total 42.5 of 450 → 9 %
    balance = page.locator("#balance progress")
    await expect(balance).to_have_attribute("value", "8")
    limits = page.locator("#limits")
    today = limits.locator(".meter", has_text="Today")
    await expect(today.locator("progress")).to_have_attribute("value", "42")
    await expect(today).to_contain_text("42.50 / 100.00 USDC")
    await expect(today).to_contain_text("57.50 USDC left")
    await expect(today).to_contain_text("frees up in 23 h")
    week = limits.locator(".meter", has_text="This week")
    await expect(week.locator("progress")).to_have_attribute("value", "14")
    total = limits.locator(".meter", has_text="Session total")
    await expect(total).to_contain_text("42.50 / 450.00 USDC")
    # can-afford: the per-payment limit (25) is the binding one now
    can_spend = page.locator("#can-spend")
    await expect(can_spend.locator(".amount")).to_contain_text("25.00")
    await expect(can_spend).to_contain_text(re.compile(r"Left today\s*57\.50 USDC"))
    await expect(can_spend).to_contain_text(re.compile(r"Left in the wallet\s*457\.50 USDC"))
    # the attempts audit, refusal reason included
    attempts = page.locator("#attempts tbody tr")
    await expect(attempts).to_have_count(3)
    await expect(attempts.first).to_contain_text("per transaction limit")
    await expect(attempts.nth(1)).to_contain_text("allowed")

    if database_url.startswith("sqlite"):  # once is enough
        await page.goto(f"{served}/dashboard/session-keys/{shop.key['id']}")
        await page.screenshot(path=str(screenshots / "dashboard-session-key.png"),
                              full_page=True)
        phone = await page_context.browser.new_context(  # type: ignore[union-attr]
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
            has_touch=True)
        try:
            await phone.add_cookies(await page_context.cookies())
            small = await phone.new_page()
            await small.goto(f"{served}/dashboard/session-keys/{shop.key['id']}")
            await expect(small.locator("#remaining")).to_contain_text("457.50")
            # nothing wider than the phone: no sideways scrolling of the page
            width = await small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width
            await small.screenshot(path=str(screenshots / "dashboard-phone.png"),
                                   full_page=True,
                                   clip={"x": 0, "y": 0, "width": 390, "height": 1250})
        finally:
            await phone.close()


async def test_freeze_unfreeze_and_rotate_an_agent_through_the_browser(
        ctx: AppContext, served: str, http: httpx.AsyncClient, page: Page) -> None:
    shop = await build_shop(ctx, http, "Acme Books")
    agent_id, key_path = shop.agent["id"], f"/v1/session-keys/{shop.key['id']}"
    extra = [(await shop.api.ok("POST", "/v1/agents", {"name": name}))["id"]
             for name in ("Returns bot", "Support bot")]
    await sign_in(page, served, shop.secret_key)
    # the list paginates with the API's cursors: newest first, two per page here
    await page.goto(f"{served}/dashboard/agents?limit=2")
    rows = page.locator("#agents tbody tr")
    await expect(rows).to_have_count(2)
    assert [await r.get_attribute("data-id") for r in await rows.all()] == extra[::-1]
    await page.click("a[rel=next]")
    await expect(rows).to_have_count(1)
    await expect(page.locator("a[rel=next]")).to_have_count(0)
    await page.click(f"#agents tr[data-id='{agent_id}'] a")
    await expect(page.locator("#agent-status")).to_contain_text("active")

    await page.click("#freeze")
    await page.wait_for_url(f"{served}/dashboard/agents/{agent_id}?notice=frozen")
    await expect(page.locator("#agent-status")).to_contain_text("frozen")
    refused = await shop.agent_api.get(key_path)
    assert (refused.status_code, refused.json()["code"]) == (401, "agent_frozen")

    await page.click("#unfreeze")
    await expect(page.locator("#agent-status")).to_contain_text("active")
    assert (await shop.agent_api.get(key_path)).status_code == 200

    await page.click("#rotate")
    token = (await page.locator("#new-token code.secret").inner_text()).strip()
    assert token.startswith("agent_test_") and token != shop.agent["token"]
    old = await shop.agent_api.get(key_path)
    assert (old.status_code, old.json()["code"]) == (401, "invalid_credentials")
    assert (await shop.api.as_(token).get(key_path)).status_code == 200
    # shown once: the agent's page never shows it again
    await page.goto(f"{served}/dashboard/agents/{agent_id}")
    assert token not in await page.content()
    await expect(page.locator("body")).to_contain_text(token[-4:])  # the hint only


async def test_payments_webhook_redelivery_audit_and_sign_out(
        ctx: AppContext, served: str, http: httpx.AsyncClient, page: Page) -> None:
    with Loopback() as rx:
        shop = await build_shop(ctx, http, "Contoso Groceries", webhook_url=rx.url())
        assert shop.endpoint is not None
        await run_once(ctx)  # the two payment.succeeded events go out
        assert sum(ids(rx).values()) == 2
        await sign_in(page, served, shop.secret_key)

        # payments: the list, then one payment
        await page.click("nav.dash-tabs >> text=Payments")
        rows = page.locator("#payments tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("Hotel deposit")
        await expect(rows.first).to_contain_text("17.50")
        await rows.first.locator("a").first.click()
        await expect(page.locator("#payment-amount")).to_contain_text("17.50")
        await expect(page.locator("body")).to_contain_text(shop.payments[1]["tx_id"])

        # webhooks: the delivery log, then a redelivery to the real receiver
        await page.click("nav.dash-tabs >> text=Webhooks")
        await page.click(f"#endpoints tr[data-id='{shop.endpoint['id']}'] a")
        deliveries = page.locator("#deliveries tbody tr")
        await expect(deliveries).to_have_count(2)
        first = deliveries.first
        delivery_id = await first.get_attribute("data-id")
        await expect(first).to_contain_text("succeeded")
        await expect(first).to_contain_text("HTTP 200")
        await first.locator("button", has_text="Redeliver").click()
        await expect(page.locator(".notice.ok")).to_contain_text("Redelivery queued")
        row = page.locator(f"#deliveries tr[data-id='{delivery_id}']")
        await expect(row).to_contain_text("pending")
        before = ids(rx)
        await run_once(ctx)
        after = ids(rx)
        assert sum(after.values()) == 3
        [again] = [wid for wid in after if after[wid] == before[wid] + 1]
        await page.reload()
        await expect(row).to_contain_text("succeeded")
        await expect(row.locator(".attempts")).to_have_text("2")
        assert again  # the same webhook-id, delivered once more

    # the audit: books equal the chain for the funded key
    await page.click("nav.dash-tabs >> text=Audit")
    audit = page.locator("#audit tbody tr")
    await expect(audit).to_have_count(1)
    await expect(audit.first).to_contain_text("consistent")
    await expect(audit.first).to_contain_text("457.50")

    # sign out: the session is gone server-side, pages send the browser to sign in
    await page.click("text=Sign out")
    await page.wait_for_url(f"{served}/dashboard/login?signed_out=true")
    await page.goto(f"{served}/dashboard/payments")
    await page.wait_for_url(f"{served}/dashboard/login?next=%2Fdashboard%2Fpayments")
