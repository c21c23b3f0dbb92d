"""Helpers for the dashboard tests: a merchant with real data built through the HTTP API, and
signing in through the browser."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from playwright.async_api import Page
from solders.keypair import Keypair

from tests.support import Api, active_key
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant


@dataclass
class Shop:
    """A merchant whose agent spends from a funded key linked to a policy session."""

    name: str
    secret_key: str
    api: Api
    agent: dict[str, Any]
    policy: dict[str, Any]
    key: dict[str, Any]
    payments: list[dict[str, Any]]
    endpoint: dict[str, Any] | None

    @property
    def agent_api(self) -> Api:
        return self.api.as_(self.agent["token"])


async def pay(agent_api: Api, key_id: str, amount: str, recipient: str,
              description: str) -> httpx.Response:
    return await agent_api.http.post(
        "/v1/payments", json={"session_key_id": key_id, "amount": amount,
                              "recipient": recipient, "description": description},
        headers={"Authorization": f"Bearer {agent_api.token}",
                 "Idempotency-Key": str(uuid.uuid4())})


async def build_shop(ctx: AppContext, http: httpx.AsyncClient, name: str, *,
                     webhook_url: str | None = None) -> Shop:
    """Key funded with 500 USDC, linked to a session of 25 per payment and 100 a day; two
    payments (25 and 17.5) succeed, a 30 is refused by the per-payment limit."""
    created = await create_merchant(ctx, name)
    api = Api(http, created.api_key)
    endpoint = None
    if webhook_url is not None:
        endpoint = await api.ok("POST", "/v1/webhook-endpoints",
                                {"url": webhook_url, "description": "order service",
                                 "event_types": ["payment.succeeded"]})
    agent = await api.ok("POST", "/v1/agents", {"name": f"{name} assistant"})
    policy = await api.ok("POST", "/v1/sessions", {
        "agent_id": agent["id"], "max_per_transaction": "25", "max_per_day": "100",
        "max_per_week": "300", "max_total": "450", "expires_in_seconds": 7 * 86400})
    _, key, _user = await active_key(api, ctx, max_amount="500", session_id=policy["id"],
                                     agent=agent)
    agent_api = api.as_(agent["token"])
    shop_wallet = str(Keypair().pubkey())
    paid = []
    for amount, what in (("25", "Flight LIS→BER"), ("17.5", "Hotel deposit")):
        resp = await pay(agent_api, key["id"], amount, shop_wallet, what)
        assert resp.status_code == 201 and resp.json()["status"] == "succeeded", resp.text
        paid.append(resp.json())
    refused = await pay(agent_api, key["id"], "30", shop_wallet, "Too big")
    assert refused.json()["code"] == "per_transaction_limit", refused.text
    return Shop(name, created.api_key, api, agent, policy, key, paid, endpoint)


async def sign_in(page: Page, base: str, secret_key: str) -> None:
    await page.goto(f"{base}/dashboard/login")
    await page.fill("#secret_key", secret_key)
    await page.click("#key-form button[type=submit]")
    await page.wait_for_url(f"{base}/dashboard")
