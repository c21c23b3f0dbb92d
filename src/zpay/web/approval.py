"""The hosted approval page: `GET /approve/{link}` shows what the user approves and lets
their wallet sign it (static/approval.js with wallets.js); the JSON endpoints beside it hand
out the bytes to sign, submit the signature, renew a lapsed approval, poll the outcome and,
on local networks, drip test funds. The link (services.approval_links) is the only
credential: no cookie, so no CSRF surface; every response says `no-store` and
`no-referrer`, so the link does not leak into caches or to other sites.

Headers: a strict CSP (`script-src 'self'`, nothing from another origin) whose
`frame-ancestors` is `ZPAY_FRAME_ANCESTORS` ('none' by default: the page cannot be framed
unless the deployment names who may embed it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.response import Template

from zpay.api.deps import context_of
from zpay.api.errors import PROBLEM, problem_for
from zpay.api.schemas import ApprovalSubmit
from zpay.services import approval_links, approval_page
from zpay.services.approval_links import LinkExpired, LinkInvalid
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.web import security

Json = dict[str, Any]


def security_headers(settings: Settings) -> dict[str, str]:
    return security.security_headers(scripts=True, frame_ancestors=settings.frame_ancestors)


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def when(moment: datetime | None, now: datetime) -> str:
    """"12 Jul 2025, 14:03 UTC (in 3 days)"."""
    if moment is None:
        return "—"
    seconds = (moment - now).total_seconds()
    unit, size = next((u for u in _UNITS if abs(seconds) >= u[1]), _UNITS[-1])
    n = max(1, round(abs(seconds) / size))
    span = f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{moment:%-d %b %Y, %H:%M} UTC ({f'in {span}' if seconds > 0 else f'{span} ago'})"


def short(address: str) -> str:
    return address if len(address) <= 14 else f"{address[:6]}…{address[-4:]}"


def _page(ctx: AppContext, name: str, status: int = 200, **context: Any) -> Template:
    return Template(f"approval/{name}.html", status_code=status,
                    headers=security_headers(ctx.settings),
                    context={"now": ctx.now(), "when": when, "short": short, **context})


def _json(ctx: AppContext, body: Json, status: int = 200) -> Response[Json]:
    return Response(body, status_code=status, headers=security_headers(ctx.settings))


def _link_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Json]:
    """A link that is not (or no longer) valid: 404 / 410, problem+json."""
    status, body = problem_for(exc)
    return Response(body, status_code=status, media_type=PROBLEM,
                    headers=security_headers(context_of(request).settings))


class ApprovalPageController(Controller):
    path = "/approve"
    include_in_schema = False
    exception_handlers = {LinkInvalid: _link_problem, LinkExpired: _link_problem}

    @get("/{link:str}")
    async def page(self, link: str, request: Request[Any, Any, Any]) -> Template:
        ctx = context_of(request)
        try:
            grant = approval_links.verify(ctx, link)
            review = await approval_page.review(ctx, grant)
        except LinkExpired as exc:
            merchant = await approval_page.merchant_name(ctx, exc.grant)
            return _page(ctx, "link_expired", 410, merchant=merchant)
        except LinkInvalid:
            return _page(ctx, "link_invalid", 404)
        return _page(ctx, "page", r=review, link=link)

    @get("/{link:str}/transaction")
    async def transaction(self, link: str, request: Request[Any, Any, Any]) -> Response[Json]:
        ctx = context_of(request)
        return _json(ctx, await approval_page.to_sign(ctx, approval_links.verify(ctx, link)))

    @get("/{link:str}/status")
    async def status(self, link: str, request: Request[Any, Any, Any]) -> Response[Json]:
        ctx = context_of(request)
        return _json(ctx, await approval_page.status(ctx, approval_links.verify(ctx, link)))

    @post("/{link:str}/submit", status_code=200)
    async def submit(self, link: str, data: ApprovalSubmit,
                     request: Request[Any, Any, Any]) -> Response[Json]:
        ctx = context_of(request)
        grant = approval_links.verify(ctx, link)
        return _json(ctx, await approval_page.submit(ctx, grant, data.signed()))

    @post("/{link:str}/renew", status_code=200)
    async def renew(self, link: str, request: Request[Any, Any, Any]) -> Response[Json]:
        ctx = context_of(request)
        return _json(ctx, await approval_page.renew(ctx, approval_links.verify(ctx, link)))

    @post("/{link:str}/faucet", status_code=200)
    async def faucet(self, link: str, request: Request[Any, Any, Any]) -> Response[Json]:
        ctx = context_of(request)
        return _json(ctx, await approval_page.drip(ctx, approval_links.verify(ctx, link)))
