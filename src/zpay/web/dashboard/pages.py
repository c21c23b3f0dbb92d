"""The dashboard's pages and actions. Thin: each calls the API's own services with the
merchant's Principal, so tenancy is exactly the API's (another merchant's id is a 404)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from zpay.api.deps import context_of
from zpay.domain.errors import NotFound, ZpayError
from zpay.services import (
    agents,
    audit,
    dashboard,
    payments,
    session_keys,
    sessions,
    webhooks,
)
from zpay.services.context import AppContext
from zpay.services.dashboard_auth import DashboardIdentity
from zpay.services.pagination import Page
from zpay.web.dashboard.present import Formatter, balance_meter, pager, window_meters
from zpay.web.dashboard.session import SECURITY_HEADERS, checked_form

KEY_STATUSES = ("pending_approval", "active", "exhausted", "expired", "revoked")
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
PREVIEW = 10  # rows of a list shown inside another page
_NOTICES = {
    "frozen": "The agent is frozen: its token is refused from the very next call.",
    "unfrozen": "The agent is active again.",
    "redelivered": "Redelivery queued: the next delivery run sends it.",
}


def render(template: str, me: DashboardIdentity, ctx: AppContext, section: str,
           status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=f"dashboard/{template}", status_code=status_code,
                    headers=SECURITY_HEADERS,
                    context={"me": me, "f": Formatter(ctx.now()), "section": section,
                             **context})


def _notice(code: str | None) -> str | None:
    return _NOTICES.get(code or "")


def _one_base_unit(decimals: int) -> str:
    return "1" if decimals == 0 else "0." + "0" * (decimals - 1) + "1"


class DashboardPages(Controller):
    path = "/"
    include_in_schema = False

    @get("/")
    async def overview(self, request: Request[Any, Any, Any], dash: DashboardIdentity) -> Template:
        ctx = context_of(request)
        p = dash.principal
        summary = await dashboard.overview(ctx, p)
        recent = await payments.list_payments(ctx, p, Page(limit=5))
        return render("overview.html", dash, ctx, "overview", summary=summary,
                      payments=recent["data"])

    # ---------------------------------------------------------------- agents

    @get("/agents")
    async def agents_list(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                          page: Page) -> Template:
        ctx = context_of(request)
        body = await agents.list_agents(ctx, dash.principal, page)
        return render("agents.html", dash, ctx, "agents", agents=body["data"],
                      pager=pager("/dashboard/agents", body, page))

    async def _agent_page(self, ctx: AppContext, dash: DashboardIdentity, agent: dict[str, Any],
                          notice: str | None = None, new_token: str | None = None) -> Template:
        keys = await session_keys.list_session_keys(ctx, dash.principal, Page(limit=PREVIEW),
                                                    agent_id=agent["id"])
        return render("agent.html", dash, ctx, "agents", agent=agent, keys=keys,
                      notice=notice, new_token=new_token)

    @get("/agents/{agent_id:str}")
    async def agent(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                    agent_id: str, notice: str | None = None) -> Template:
        ctx = context_of(request)
        agent = await agents.get_agent(ctx, dash.principal, agent_id)
        return await self._agent_page(ctx, dash, agent, _notice(notice))

    async def _set_frozen(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                          agent_id: str, frozen: bool) -> Redirect:
        await checked_form(request, dash)
        await agents.set_frozen(context_of(request), dash.principal, agent_id, frozen)
        notice = "frozen" if frozen else "unfrozen"
        return Redirect(f"/dashboard/agents/{agent_id}?notice={notice}", status_code=303)

    @post("/agents/{agent_id:str}/freeze", status_code=303)
    async def freeze(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                     agent_id: str) -> Redirect:
        return await self._set_frozen(request, dash, agent_id, True)

    @post("/agents/{agent_id:str}/unfreeze", status_code=303)
    async def unfreeze(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                       agent_id: str) -> Redirect:
        return await self._set_frozen(request, dash, agent_id, False)

    @post("/agents/{agent_id:str}/rotate-token", status_code=200)
    async def rotate(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                     agent_id: str) -> Template:
        """Answers the page itself (not a redirect): the new token is shown this once."""
        await checked_form(request, dash)
        ctx = context_of(request)
        rotated = await agents.rotate_token(ctx, dash.principal, agent_id)
        token = rotated.pop("token")
        return await self._agent_page(
            ctx, dash, rotated, "A new token was issued; the old one stopped working just now.",
            new_token=token)

    # ---------------------------------------------------------------- session keys

    @get("/session-keys")
    async def keys_list(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                        page: Page, status: str | None = None) -> Template:
        ctx = context_of(request)
        status = status if status in KEY_STATUSES else None
        body = await session_keys.list_session_keys(ctx, dash.principal, page, status)
        return render("session_keys.html", dash, ctx, "keys", keys=body["data"],
                      status=status, statuses=KEY_STATUSES,
                      pager=pager("/dashboard/session-keys", body, page,
                                  status=status))

    @get("/session-keys/{key_id:str}")
    async def key(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                  key_id: str) -> Template:
        ctx = context_of(request)
        p = dash.principal
        key = await session_keys.get_status(ctx, p, key_id)
        try:
            agent: dict[str, Any] | None = await agents.get_agent(ctx, p, key["agent_id"])
        except NotFound:
            agent = None  # deleted: the key stays for the books
        policy = None
        if key["linked_session_id"]:
            policy = await sessions.get_session(ctx, p, key["linked_session_id"])
        try:
            afford: dict[str, Any] | None = await session_keys.can_afford(
                ctx, p, key_id, _one_base_unit(key["decimals"]))
        except ZpayError:
            afford = None  # e.g. its chain is not enabled on this deployment any more
        attempts = await session_keys.list_attempts(ctx, p, key_id, Page(limit=PREVIEW))
        paid = await payments.list_payments(ctx, p, Page(limit=PREVIEW), session_key_id=key_id)
        return render("session_key.html", dash, ctx, "keys", key=key, agent=agent,
                      policy=policy, afford=afford, balance=balance_meter(key),
                      meters=window_meters(policy) if policy else [],
                      attempts=attempts, payments=paid)

    @get("/session-keys/{key_id:str}/attempts")
    async def key_attempts(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                           key_id: str, page: Page) -> Template:
        ctx = context_of(request)
        key = await session_keys.get_status(ctx, dash.principal, key_id)
        body = await session_keys.list_attempts(ctx, dash.principal, key_id, page)
        return render("attempts.html", dash, ctx, "keys", key=key, attempts=body["data"],
                      pager=pager(f"/dashboard/session-keys/{key_id}/attempts", body,
                                  page))

    # ---------------------------------------------------------------- payments

    @get("/payments")
    async def payments_list(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                            page: Page, session_key_id: str | None = None) -> Template:
        ctx = context_of(request)
        body = await payments.list_payments(ctx, dash.principal, page, session_key_id)
        return render("payments.html", dash, ctx, "payments", payments=body["data"],
                      session_key_id=session_key_id,
                      pager=pager("/dashboard/payments", body, page,
                                  session_key_id=session_key_id))

    @get("/payments/{payment_id:str}")
    async def payment(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                      payment_id: str) -> Template:
        ctx = context_of(request)
        body = await payments.get_payment(ctx, dash.principal, payment_id)
        return render("payment.html", dash, ctx, "payments", payment=body)

    # ---------------------------------------------------------------- webhooks

    @get("/webhooks")
    async def endpoints(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                        page: Page) -> Template:
        ctx = context_of(request)
        body = await webhooks.list_endpoints(ctx, dash.principal, page)
        return render("webhooks.html", dash, ctx, "webhooks", endpoints=body["data"],
                      pager=pager("/dashboard/webhooks", body, page))

    @get("/webhooks/{endpoint_id:str}")
    async def endpoint(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                       endpoint_id: str, page: Page, status: str | None = None,
                       notice: str | None = None) -> Template:
        ctx = context_of(request)
        status = status if status in DELIVERY_STATUSES else None
        endpoint = await webhooks.get_endpoint(ctx, dash.principal, endpoint_id)
        body = await webhooks.list_deliveries(ctx, dash.principal, endpoint_id, page, status)
        return render("webhook.html", dash, ctx, "webhooks", endpoint=endpoint,
                      deliveries=body["data"], status=status, statuses=DELIVERY_STATUSES,
                      notice=_notice(notice),
                      pager=pager(f"/dashboard/webhooks/{endpoint_id}", body,
                                  page, status=status))

    @post("/webhook-deliveries/{delivery_id:str}/redeliver", status_code=303)
    async def redeliver(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                        delivery_id: str) -> Redirect:
        await checked_form(request, dash)
        queued = await webhooks.redeliver(context_of(request), dash.principal, delivery_id)
        return Redirect(f"/dashboard/webhooks/{queued['endpoint_id']}?notice=redelivered",
                        status_code=303)

    # ---------------------------------------------------------------- audit

    @get("/audit")
    async def audit_page(self, request: Request[Any, Any, Any], dash: DashboardIdentity,
                         page: Page) -> Template:
        ctx = context_of(request)
        body = await audit.list_findings(ctx, dash.principal, page)
        return render("audit.html", dash, ctx, "audit", findings=body["data"],
                      pager=pager("/dashboard/audit", body, page))
