"""The MCP tools over streamable HTTP at `/mcp`, mounted in `zpay serve`.

Every request must carry `Authorization: Bearer <agent token>` (or a policy session's
`as_` token). It is checked with the API's own authentication BEFORE the MCP layer
sees the request: an unknown, rotated, frozen or deleted agent's token is a 401 and a
merchant's secret key a 403 (`agent_token_required`), as problem+json, and no tool
runs. The tools then call this same app in-process (an ASGI transport, no network)
with that token and the request's client address, so they pass through exactly the
checks of the HTTP API, rate limits included.

The MCP transport is stateless with JSON responses: no session lives in one process's
memory, so any number of replicas can serve `/mcp` behind a plain load balancer.
DNS-rebinding protection (a Host/Origin allow-list) is off: it guards servers that
trust ambient credentials, and `/mcp` trusts only the bearer token in each request.

`pay_x402` fetches URLs from the server's network here, so each fetch goes only to
addresses checked as public (the webhook SSRF guard, with the connection pinned to the
checked address); `ZPAY_MCP_ALLOW_PRIVATE_URLS=1` opens loopback and private networks
for local development.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import httpx
from litestar import Litestar, Request
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from starlette.authentication import AuthCredentials

from zpay.api.deps import context_of
from zpay.api.errors import PROBLEM, problem, problem_for
from zpay.client import AsyncZpay
from zpay.domain.errors import ZpayError
from zpay.mcp.tools import Backend, Refusal, UrlRefused, build_server
from zpay.services.auth import Role, authenticate, bearer_token
from zpay.settings import Settings
from zpay.webhooks.pinning import PINNED_TARGET_EXTENSION, PinnedTransport
from zpay.webhooks.ssrf import UnsafeWebhookUrl, resolve_pinned

MCP_PATH = "/mcp"
SCOPE = "zpay:agent"
FETCH_TIMEOUT_S = 30.0
_INTERNAL_URL = "http://zpay.internal"  # the in-process API; never resolved
_caller: ContextVar[tuple[str, int] | None] = ContextVar("zpay_mcp_caller", default=None)


class McpEndpoint:
    """One per app: the MCP server, its session manager (run by the app's lifespan) and
    the mount handler. A session manager runs once, so a new app needs a new one."""

    def __init__(self, settings: Settings) -> None:
        self._allow_private = settings.mcp_allow_private_urls
        self._api: AsyncZpay | None = None
        self._http: httpx.AsyncClient | None = None
        self.server = build_server(Backend(zpay=self._agent_client, http=self._fetcher,
                                           payment_wait_s=settings.confirm_timeout_s))
        self.server.streamable_http_app(
            stateless_http=True, json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self.manager = self.server.session_manager

    def route_handler(self) -> ASGIRouteHandler:
        return asgi(MCP_PATH, is_mount=True, copy_scope=True, include_in_schema=False)(
            self.handle)

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        api = AsyncZpay("", base_url=_INTERNAL_URL, transport=_InProcess(app))
        http = httpx.AsyncClient(transport=PinnedTransport(), follow_redirects=False,
                                 trust_env=False, timeout=FETCH_TIMEOUT_S,
                                 event_hooks={"request": [self._pin]})
        self._api, self._http = api, http
        try:
            async with self.manager.run():
                yield
        finally:
            self._api = self._http = None
            await http.aclose()
            await api.aclose()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope)
        header = request.headers.get("authorization")
        try:
            principal = await authenticate(context_of(request), header)
        except ZpayError as exc:
            await _problem(*problem_for(exc))(scope, receive, send)
            return
        token = bearer_token(header)  # never None once authenticated
        if principal.role is not Role.AGENT or token is None:
            await _problem(*problem(
                403, "agent_token_required",
                "the MCP endpoint acts as an agent: use the agent's token (agent_…) or a "
                "policy session token (as_…), not a merchant's secret key"))(scope, receive, send)
            return
        user = AuthenticatedUser(AccessToken(
            token=token, client_id=principal.agent_id or "",
            subject=principal.policy_session_id or principal.agent_id, scopes=[SCOPE]))
        inner: dict[str, Any] = {**scope, "user": user, "auth": AuthCredentials([SCOPE])}
        # Read by the tools (get_access_token) and the in-process transport (_caller).
        reset, reset_caller = auth_context_var.set(user), _caller.set(scope.get("client"))
        try:
            await self.manager.handle_request(inner, receive, send)  # type: ignore[arg-type]
        finally:
            _caller.reset(reset_caller)
            auth_context_var.reset(reset)

    def _agent_client(self) -> AsyncZpay:
        token = get_access_token()
        if token is None or self._api is None:
            raise Refusal("missing_credentials", "this request carried no agent credentials")
        return self._api.with_token(token.token)

    def _fetcher(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Refusal("service_unavailable", "zpay is shutting down")
        return self._http

    async def _pin(self, request: httpx.Request) -> None:
        """Check each outgoing x402 request's destination and pin its connection to it."""
        try:
            target = await resolve_pinned(str(request.url), allow_private=self._allow_private)
        except UnsafeWebhookUrl as exc:
            raise UrlRefused(f"{request.url.host} is not a public address ({exc.reason}); "
                             "zpay fetches only public URLs") from exc
        except OSError as exc:
            raise UrlRefused(f"{request.url.host} does not resolve") from exc
        request.extensions[PINNED_TARGET_EXTENSION] = target


class _InProcess(httpx.AsyncBaseTransport):
    """The tools' calls to this same app, in-process, as coming from the MCP request's own
    client address: rate limits per address then count the agent's real address, not one
    shared loopback address for every agent."""

    def __init__(self, app: Litestar) -> None:
        self._app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = _caller.get() or ("127.0.0.1", 0)
        transport = httpx.ASGITransport(app=self._app, client=client)  # type: ignore[arg-type]
        return await transport.handle_async_request(request)


def _problem(status: int, body: dict[str, Any]) -> ASGIResponse:
    headers = {"www-authenticate": 'Bearer realm="zpay"'} if status == 401 else None
    return ASGIResponse(body=json.dumps(body), status_code=status, media_type=PROBLEM,
                        headers=headers)
