"""The dashboard's cookie, its CSRF checks, and what happens when either is missing.

- `zpay_dash`: the session token. HttpOnly (no script reads it), SameSite=Strict (no other
  site's page sends it), Secure when the request came over TLS or `public_url` is https,
  Path=/dashboard, Max-Age = the session's lifetime.
- Every POST carries `csrf_token`, the session's synchronizer token; without it, or with
  another, the answer is 403 and nothing runs. The sign-in form, before any session
  exists, is protected by a double-submit cookie (`zpay_dash_login`, also SameSite=Strict).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from zpay.api.deps import context_of
from zpay.domain.errors import NotFound, ZpayError
from zpay.services import dashboard_auth
from zpay.services.dashboard_auth import DashboardIdentity
from zpay.services.session_tokens import same_secret
from zpay.web import security
from zpay.web.security import CsrfRefused, NotSignedIn

SESSION_COOKIE = "zpay_dash"
LOGIN_COOKIE = "zpay_dash_login"
COOKIE_PATH = "/dashboard"
LOGIN_PATH = "/dashboard/login"
LOGIN_FORM_TTL_S = 3600

SECURITY_HEADERS = security.security_headers(scripts=False)


def cookie(request: Request[Any, Any, Any], key: str, value: str, max_age: int) -> Cookie:
    return security.cookie(request, key, value, max_age, path=COOKIE_PATH)


def expired_cookie(request: Request[Any, Any, Any], key: str) -> Cookie:
    return cookie(request, key, "", 0)


async def provide_identity(request: Request[Any, Any, Any]) -> DashboardIdentity:
    identity = await dashboard_auth.resolve(context_of(request),
                                            request.cookies.get(SESSION_COOKIE))
    if identity is None:
        raise NotSignedIn
    return identity


async def checked_form(request: Request[Any, Any, Any],
                       identity: DashboardIdentity) -> dict[str, str]:
    """The POSTed form, once its CSRF token matched this session's."""
    return await security.checked_form(request, identity.csrf_token)


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def login_token_ok(request: Request[Any, Any, Any], submitted: str | None) -> bool:
    return same_secret(request.cookies.get(LOGIN_COOKIE), submitted)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: only a dashboard path of this site."""
    if value and value.startswith("/dashboard") and not value.startswith("/dashboard/login") \
            and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"


# ------------------------------------------------------------------ exception handlers


def to_login(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    target = LOGIN_PATH
    if request.method == "GET" and request.url.path != "/dashboard":
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(safe_next(path), safe="")
    return Redirect(path=target, status_code=303, headers=SECURITY_HEADERS,
                    cookies=[expired_cookie(request, SESSION_COOKIE)]
                    if request.cookies.get(SESSION_COOKIE) else None)


def _error_page(status: int, title: str, detail: str) -> Template:
    return Template(template_name="dashboard/error.html", status_code=status,
                    headers=SECURITY_HEADERS,
                    context={"status": status, "title": title, "detail": detail})


def csrf_refused(_request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    return _error_page(403, "This form has expired",
                       "The form was not sent from this dashboard session, so nothing was "
                       "changed. Go back, reload the page and try again.")


def zpay_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, NotFound):
        return _error_page(404, "Not found", "There is nothing here, or it belongs to another "
                           "account.")
    assert isinstance(exc, ZpayError)
    from zpay.api.errors import problem_for

    status, body = problem_for(exc)
    return _error_page(status, "That did not work", body["detail"])


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    NotSignedIn: to_login, CsrfRefused: csrf_refused, ZpayError: zpay_error,
}
