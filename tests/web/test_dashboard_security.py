"""The dashboard's locks, in a real browser on both databases: sign-in (secret key, dashboard
user), the session cookie, expiry, CSRF refusal and tenancy by URL."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select, update

from tests.jobs.receivers import Loopback
from tests.web.dashboard_support import build_shop, sign_in
from zpay.domain.errors import Conflict, InvalidRequest
from zpay.jobs.scheduler import run_once
from zpay.services import dashboard_auth
from zpay.services.context import AppContext, utc_now
from zpay.services.merchants import create_merchant
from zpay.settings import Settings
from zpay.store.dashboard_models import DashboardSession, DashboardUser
from zpay.store.models import Agent, ApiKey

ZPAY = Path(sys.executable).with_name("zpay")


@pytest.fixture
def settings_env(settings: Settings) -> dict[str, str]:
    """The environment for a `zpay` subprocess on the test's database."""
    return {**os.environ, "ZPAY_DATABASE_URL": settings.database_url,
            "ZPAY_MASTER_KEY": settings.master_key, "ZPAY_DATA_DIR": str(settings.data_dir),
            "ZPAY_CHAINS": ",".join(settings.chains)}


async def test_secret_key_sign_in_cookie_and_expiry(
        ctx: AppContext, served: str, page: Page, page_context: BrowserContext) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, dashboard_session_ttl_s=600)
    shop = await create_merchant(ctx, "Fabrikam")

    # a wrong key, an agent-shaped token and garbage are refused, and never echoed back
    await page.goto(f"{served}/dashboard/login")
    for wrong in (shop.api_key[:-1] + ("A" if shop.api_key[-1] != "A" else "B"),
                  "sk_test_" + "x" * 36, "not a key"):
        await page.fill("#secret_key", wrong)
        async with page.expect_response(f"{served}/dashboard/login") as answer:
            await page.click("#key-form button[type=submit]")
        assert (await answer.value).status == 401
        await expect(page.locator("#login-error")).to_contain_text("not recognised")
        assert wrong not in await page.content()
    assert [c for c in await page_context.cookies() if c["name"] == "zpay_dash"] == []

    await page.fill("#secret_key", shop.api_key)
    await page.click("#key-form button[type=submit]")
    await page.wait_for_url(f"{served}/dashboard")
    await expect(page.locator(".dash-who")).to_contain_text("Fabrikam")
    assert shop.api_key not in await page.content()

    [session] = [c for c in await page_context.cookies() if c["name"] == "zpay_dash"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain http on loopback; https sets Secure
    assert session["path"] == "/dashboard"
    assert shop.api_key not in session["value"]
    lifetime = session["expires"] - utc_now().timestamp()
    assert 590 <= lifetime <= 600
    assert await page.evaluate("document.cookie") == ""  # no script can read it
    async with ctx.db.sessions() as s:
        [row] = (await s.execute(select(DashboardSession))).scalars().all()
    assert row.token_hash != session["value"] and len(row.token_hash) == 64
    assert row.expires_at - row.created_at == timedelta(seconds=600)

    # past the configured lifetime the server refuses it, whatever the browser still sends
    ctx.clock = lambda: utc_now() + timedelta(seconds=601)
    await page.goto(f"{served}/dashboard/agents")
    await page.wait_for_url(f"{served}/dashboard/login?next=%2Fdashboard%2Fagents")
    ctx.clock = utc_now

    # a new sign-in lasts again, and revoking the key it used ends it at once
    await sign_in(page, served, shop.api_key)
    await page.goto(f"{served}/dashboard/agents")
    await expect(page.locator("h1")).to_have_text("Agents")
    async with ctx.db.transaction() as s:
        await s.execute(update(ApiKey).where(ApiKey.merchant_id == shop.merchant_id)
                        .values(revoked_at=utc_now()))
    await page.goto(f"{served}/dashboard/agents")
    await page.wait_for_url(f"{served}/dashboard/login?next=%2Fdashboard%2Fagents")


async def test_nothing_is_reachable_without_a_session(served: str, http: httpx.AsyncClient,
                                                      page: Page) -> None:
    for path in ("/dashboard", "/dashboard/agents", "/dashboard/session-keys",
                 "/dashboard/session-keys/skey_x", "/dashboard/payments",
                 "/dashboard/payments/pay_x", "/dashboard/webhooks", "/dashboard/audit"):
        resp = await http.get(path)
        assert resp.status_code == 303, (path, resp.status_code)
        assert resp.headers["location"].startswith("/dashboard/login"), path
    for path in ("/dashboard/agents/agt_x/freeze", "/dashboard/logout",
                 "/dashboard/webhook-deliveries/wd_x/redeliver"):
        resp = await http.post(path, data={"csrf_token": "x"})
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    await page.goto(f"{served}/dashboard/session-keys")
    await page.wait_for_url(f"{served}/dashboard/login?next=%2Fdashboard%2Fsession-keys")
    await expect(page.locator("h1")).to_have_text("Sign in to your dashboard")


async def test_behind_tls_the_cookies_are_secure_and_pages_allow_no_script(
        ctx: AppContext, served: str, http: httpx.AsyncClient) -> None:
    shop = await create_merchant(ctx, "Litware")
    tls = {"X-Forwarded-Proto": "https"}  # uvicorn trusts it from loopback, as from a proxy
    form = await http.get("/dashboard/login", headers=tls)
    assert form.status_code == 200
    assert "Secure" in form.headers["set-cookie"]
    login_token = form.cookies["zpay_dash_login"]
    assert f'value="{login_token}"' in form.text
    # (httpx keeps Secure cookies for https URLs only: this test hands them back itself)
    signed = await http.post("/dashboard/login", headers={
        **tls, "Cookie": f"zpay_dash_login={login_token}"}, data={
        "login_token": login_token, "method": "key", "secret_key": shop.api_key,
        "next": "https://evil.example/"})
    assert signed.status_code == 303
    assert signed.headers["location"] == "/dashboard"  # never off-site
    [session] = [c for c in signed.headers.get_list("set-cookie")
                 if c.startswith("zpay_dash=")]
    attributes = {a.strip().split("=")[0].lower() for a in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes
    assert "samesite=strict" in session.lower() and shop.api_key not in session
    token = session.split(";")[0].split("=", 1)[1]
    page = await http.get("/dashboard", headers={**tls, "Cookie": f"zpay_dash={token}"})
    assert page.status_code == 200 and "Litware" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script" not in csp  # no script may run
    assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text


async def test_dashboard_user_added_by_the_cli_signs_in(
        ctx: AppContext, served: str, settings_env: dict[str, str], page: Page) -> None:
    shop = await create_merchant(ctx, "Tailspin Toys")
    password = "correct horse battery staple"
    added = subprocess.run(
        [str(ZPAY), "merchants", "add-user", "--merchant", shop.merchant_id,
         "--email", "Ops@Tailspin.example", "--password-stdin"],
        input=password + "\n", env=settings_env, capture_output=True, text=True, timeout=60,
        check=False)
    assert added.returncode == 0, added.stderr
    assert "ops@tailspin.example" in added.stdout and password not in added.stdout + added.stderr
    async with ctx.db.sessions() as s:
        user = (await s.execute(select(DashboardUser))).scalar_one()
    assert user.merchant_id == shop.merchant_id
    assert user.password_hash.startswith("scrypt$32768$8$1$") and password not in user.password_hash
    with pytest.raises(Conflict, match="exists"):  # emails are unique, in any case
        await dashboard_auth.add_user(ctx, shop.merchant_id, "OPS@tailspin.example", password)
    with pytest.raises(InvalidRequest, match="at least 12"):
        await dashboard_auth.add_user(ctx, shop.merchant_id, "dev@tailspin.example", "short")

    await page.goto(f"{served}/dashboard/login")
    for email, wrong in (("ops@tailspin.example", password + "!"),
                         ("nobody@tailspin.example", password)):
        await page.fill("#email", email)
        await page.fill("#password", wrong)
        async with page.expect_response(f"{served}/dashboard/login") as answer:
            await page.click("#password-form button[type=submit]")
        assert (await answer.value).status == 401
        await expect(page.locator("#login-error")).to_have_text("wrong email or password")
    await page.fill("#email", "OPS@tailspin.example")
    await page.fill("#password", password)
    await page.click("#password-form button[type=submit]")
    await page.wait_for_url(f"{served}/dashboard")
    await expect(page.locator(".dash-who")).to_contain_text("Tailspin Toys")
    await expect(page.locator("footer")).to_contain_text("ops@tailspin.example")


async def test_forms_without_this_sessions_csrf_token_are_refused(
        ctx: AppContext, served: str, page: Page, page_context: BrowserContext,
        browser: Browser) -> None:
    shop = await create_merchant(ctx, "Wingtip")
    other = await create_merchant(ctx, "Wingtip too")
    agent = await _agent(served, shop.api_key)
    await sign_in(page, served, shop.api_key)
    await page.goto(f"{served}/dashboard/agents/{agent}")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token

    # another signed-in session's token is not this session's
    elsewhere = await browser.new_context()
    try:
        other_page = await elsewhere.new_page()
        await sign_in(other_page, served, other.api_key)
        foreign = await other_page.locator("input[name=csrf_token]").first.get_attribute("value")
    finally:
        await elsewhere.close()
    assert foreign and foreign != token

    freeze = f"{served}/dashboard/agents/{agent}/freeze"
    for form in ({}, {"csrf_token": ""}, {"csrf_token": token[:-1] + "x"},
                 {"csrf_token": foreign}):
        resp = await page_context.request.post(freeze, form=form, max_redirects=0)
        assert resp.status == 403, (form, resp.status)
        assert "nothing was changed" in await resp.text()
    async with ctx.db.sessions() as s:
        assert (await s.get(Agent, agent)).status == "active"  # type: ignore[union-attr]
    # sign-out and sign-in are forms too
    resp = await page_context.request.post(f"{served}/dashboard/logout", form={},
                                           max_redirects=0)
    assert resp.status == 403
    await page.goto(f"{served}/dashboard")
    await expect(page.locator(".dash-who")).to_contain_text("Wingtip")  # still signed in
    async with httpx.AsyncClient(base_url=served) as anonymous:
        resp = await anonymous.post("/dashboard/login", data={"secret_key": shop.api_key})
    assert resp.status_code == 403 and "zpay_dash" not in resp.headers.get("set-cookie", "")

    # with the token, the same request works
    resp = await page_context.request.post(freeze, form={"csrf_token": token}, max_redirects=0)
    assert resp.status == 303
    async with ctx.db.sessions() as s:
        assert (await s.get(Agent, agent)).status == "frozen"  # type: ignore[union-attr]


async def test_merchant_a_never_sees_merchant_bs_objects_by_url(
        ctx: AppContext, served: str, http: httpx.AsyncClient, page: Page,
        page_context: BrowserContext) -> None:
    with Loopback() as rx:
        a = await build_shop(ctx, http, "Alpha Air")
        b = await build_shop(ctx, http, "Bravo Books", webhook_url=rx.url())
        await run_once(ctx)
        assert b.endpoint is not None
        deliveries = await b.api.ok("GET", f"/v1/webhook-endpoints/{b.endpoint['id']}"
                                           "/deliveries")
        b_delivery = deliveries["data"][0]["id"]
    await sign_in(page, served, a.secret_key)

    for path in (f"/dashboard/agents/{b.agent['id']}",
                 f"/dashboard/session-keys/{b.key['id']}",
                 f"/dashboard/session-keys/{b.key['id']}/attempts",
                 f"/dashboard/payments/{b.payments[0]['id']}",
                 f"/dashboard/webhooks/{b.endpoint['id']}"):
        resp = await page.goto(served + path)
        assert resp is not None and resp.status == 404, path
        await expect(page.locator("h1")).to_have_text("Not found")
        content = await page.content()
        assert "Bravo" not in content and b.agent["id"] not in content.replace(path, "")
    # and A's own are there, with nothing of B's in A's lists
    resp = await page.goto(f"{served}/dashboard/session-keys/{a.key['id']}")
    assert resp is not None and resp.status == 200
    for path in ("/dashboard/agents", "/dashboard/session-keys", "/dashboard/payments",
                 "/dashboard/webhooks", "/dashboard/audit", "/dashboard"):
        await page.goto(served + path)
        content = await page.content()
        for own_id in (b.agent["id"], b.key["id"], b.payments[0]["id"], b.endpoint["id"]):
            assert own_id not in content and own_id[-6:] not in content, (path, own_id)
    # B's filtered lists through A's session are empty, not B's
    await page.goto(f"{served}/dashboard/payments?session_key_id={b.key['id']}")
    await expect(page.locator(".empty")).to_contain_text("No payments yet")

    # actions on B's objects with A's valid CSRF token: 404, nothing changes
    await page.goto(f"{served}/dashboard/agents/{a.agent['id']}")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    for path in (f"/dashboard/agents/{b.agent['id']}/freeze",
                 f"/dashboard/agents/{b.agent['id']}/rotate-token",
                 f"/dashboard/webhook-deliveries/{b_delivery}/redeliver"):
        resp2 = await page_context.request.post(served + path, form={"csrf_token": token},
                                                max_redirects=0)
        assert resp2.status == 404, path
    assert (await b.agent_api.get(f"/v1/session-keys/{b.key['id']}")).status_code == 200
    delivery = await b.api.ok("GET", f"/v1/webhook-deliveries/{b_delivery}")
    assert delivery["status"] == "succeeded"


async def _agent(served: str, secret_key: str) -> str:
    async with httpx.AsyncClient(base_url=served) as client:
        resp = await client.post("/v1/agents", json={"name": "shopper"},
                                 headers={"Authorization": f"Bearer {secret_key}"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])
