"""Signing in (secret key, or email + password) and out of the dashboard."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from zpay.api.deps import context_of
from zpay.domain.errors import Unauthorized
from zpay.services import dashboard_auth
from zpay.services.dashboard_auth import DashboardIdentity
from zpay.web.dashboard.session import (
    LOGIN_COOKIE,
    LOGIN_FORM_TTL_S,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    CsrfRefused,
    checked_form,
    cookie,
    expired_cookie,
    login_token_ok,
    new_login_token,
    safe_next,
)


def _login_page(request: Request[Any, Any, Any], *, next_path: str, error: str | None = None,
                method: str = "key", email: str = "", status_code: int = 200,
                signed_out: bool = False) -> Template:
    token = new_login_token()
    return Template(
        template_name="dashboard/login.html", status_code=status_code, headers=SECURITY_HEADERS,
        context={"login_token": token, "next": next_path, "error": error, "method": method,
                 "email": email, "signed_out": signed_out},
        cookies=[cookie(request, LOGIN_COOKIE, token, LOGIN_FORM_TTL_S)])


class DashboardLogin(Controller):
    path = "/"
    include_in_schema = False

    @get("/login")
    async def login_form(self, request: Request[Any, Any, Any], next: str | None = None,
                         signed_out: bool = False) -> Response[Any]:
        identity = await dashboard_auth.resolve(context_of(request),
                                                request.cookies.get(SESSION_COOKIE))
        if identity is not None:
            return Redirect(safe_next(next), status_code=303)
        return _login_page(request, next_path=safe_next(next), signed_out=signed_out)

    @post("/login", status_code=303)
    async def login(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not login_token_ok(request, fields.get("login_token")):
            raise CsrfRefused
        next_path = safe_next(fields.get("next"))
        method = "password" if fields.get("method") == "password" else "key"
        ctx = context_of(request)
        try:
            if method == "password":
                signed = await dashboard_auth.sign_in_with_password(
                    ctx, fields.get("email", ""), fields.get("password", ""))
            else:
                signed = await dashboard_auth.sign_in_with_key(ctx, fields.get("secret_key", ""))
        except Unauthorized as exc:
            # The key or password typed is never echoed back into the page.
            return _login_page(request, next_path=next_path, error=exc.message, method=method,
                               email=fields.get("email", "") if method == "password" else "",
                               status_code=401)
        max_age = int((signed.expires_at - ctx.now()).total_seconds())
        return Redirect(next_path, status_code=303, headers=SECURITY_HEADERS, cookies=[
            cookie(request, SESSION_COOKIE, signed.token, max_age),
            expired_cookie(request, LOGIN_COOKIE)])

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any], dash: DashboardIdentity) -> Redirect:
        await checked_form(request, dash)
        await dashboard_auth.sign_out(context_of(request), request.cookies.get(SESSION_COOKIE))
        return Redirect("/dashboard/login?signed_out=true", status_code=303,
                        headers=SECURITY_HEADERS,
                        cookies=[expired_cookie(request, SESSION_COOKIE)])
