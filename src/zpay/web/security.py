"""What every page family (approval, dashboard, /me) sends to keep the browser in check: the
response headers, the session cookie's attributes and the CSRF check of a posted form.

- Headers: a CSP that allows nothing from another origin (`default-src 'none'`; scripts and
  fetches from this origin only where the page has a script), `no-store`, `no-referrer`,
  `nosniff`, and who may frame the page (`frame-ancestors`, 'none' unless told; then also
  `X-Frame-Options: DENY` for browsers without CSP frame-ancestors).
- Cookies: HttpOnly, SameSite=Strict, Secure when the request came over TLS or `public_url`
  is https.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import Cookie

from zpay.api.deps import context_of
from zpay.services.session_tokens import same_secret

NO_FRAMING = ("'none'",)


def security_headers(*, scripts: bool,
                     frame_ancestors: Sequence[str] = NO_FRAMING) -> dict[str, str]:
    script = "script-src 'self'; connect-src 'self'; " if scripts else ""
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            f"default-src 'none'; {script}style-src 'self'; img-src 'self' data:; "
            f"form-action 'self'; frame-ancestors {' '.join(frame_ancestors)}; "
            "base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if tuple(frame_ancestors) == NO_FRAMING:
        headers["X-Frame-Options"] = "DENY"
    return headers


def secure_cookies(request: Request[Any, Any, Any]) -> bool:
    public_url = str(context_of(request).settings.public_url or "")
    return request.url.scheme == "https" or urlsplit(public_url).scheme == "https"


def cookie(request: Request[Any, Any, Any], key: str, value: str, max_age: int, *,
           path: str) -> Cookie:
    """A cookie no script reads and no other site's page sends."""
    return Cookie(key=key, value=value, path=path, max_age=max_age, httponly=True,
                  samesite="strict", secure=secure_cookies(request))


class NotSignedIn(Exception):
    """No live session: the browser goes to the sign-in page."""


class CsrfRefused(Exception):
    """A form came without this session's CSRF token."""


async def checked_form(request: Request[Any, Any, Any], csrf_token: str) -> dict[str, str]:
    """The POSTed form, once its `csrf_token` matched the session's; else `CsrfRefused`."""
    form = await request.form()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not same_secret(csrf_token, token):
        raise CsrfRefused
    return {k: v for k, v in form.items() if isinstance(v, str)}
