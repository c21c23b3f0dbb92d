"""The user's own pages under /me: sign in with the wallet, see every key it funded, revoke.

- `GET /me/sign-in`: discovers the browser's wallets (static/user.js with wallets.js: Wallet
  Standard and EIP-6963), asks zpay for a challenge, has the wallet sign it
  (`solana:signMessage` / `personal_sign`) and posts it back. JSON endpoints
  `POST /me/sign-in/challenge` and `POST /me/sign-in` answer problem+json on refusal.
- `zpay_user` cookie: the session token. HttpOnly, SameSite=Strict, Path=/me, Secure when
  the request came over TLS or `public_url` is https, Max-Age = the session's life.
- `GET /me`: the keys; `GET /me/keys/{id}`: one of them (another wallet's: 404). Forms
  (`revoke`, `sign-out`) carry the session's CSRF token; without it: 403, nothing done.
- The domain a message must name is `public_url`'s host when set (production: set it),
  else the request's Host.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import Provide
from litestar.response import Redirect, Template

from zpay.api.deps import context_of
from zpay.domain.errors import NotFound, ZpayError
from zpay.services import user_sessions
from zpay.services.requests import Request as Body
from zpay.services.user_sessions import WalletUser
from zpay.web.dashboard.present import money, when
from zpay.web.security import CsrfRefused, NotSignedIn, checked_form, cookie, security_headers

COOKIE = "zpay_user"
COOKIE_PATH = "/me"
SIGN_IN_PATH = "/me/sign-in"
_HEADERS = security_headers(scripts=True)


class ChallengeBody(Body):
    family: str
    address: str


class SignInBody(Body):
    message: str
    signature: str


# ------------------------------------------------------------------ request facts


def _origin(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """(scheme, host[:port]) users reach this deployment at."""
    public_url = str(context_of(request).settings.public_url or "")
    if public_url:
        parts = urlsplit(public_url)
        return parts.scheme, parts.netloc
    return request.url.scheme, request.headers.get("host", "") or request.url.netloc


def _cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return cookie(request, COOKIE, value, max_age, path=COOKIE_PATH)


async def provide_user(request: Request[Any, Any, Any]) -> WalletUser:
    user = await user_sessions.resolve(context_of(request), request.cookies.get(COOKIE))
    if user is None:
        raise NotSignedIn
    return user


# ------------------------------------------------------------------ presentation


def until(value: str | None, now: datetime) -> str:
    """'in 6 days', 'in 3 hours', '12 minutes ago': how far a moment is from now."""
    if not value:
        return ""
    seconds = int((datetime.fromisoformat(value.replace("Z", "+00:00")) - now).total_seconds())
    span = abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if span >= size:
            count = (span + size // 2) // size  # nearest: 6 d 23 h 59 m is "7 days"
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if seconds > 0 else f"{text} ago"
    return "now"


def short(value: str | None, keep: int = 6) -> str:
    if not value:
        return "—"
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-keep:]}"


def _totals(keys: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the live keys still hold, per token (exact, from the decimal strings)."""
    sums: dict[str, Decimal] = {}
    for key in keys:
        if key["can_revoke"]:
            sums[key["token"]] = sums.get(key["token"], Decimal(0)) + Decimal(key["remaining"])
    return [{"token": token, "amount": f"{total:f}"} for token, total in sums.items()]


def _page(name: str, context: dict[str, Any], status: int = 200,
          now: datetime | None = None) -> Template:
    moment = now or datetime.now(UTC)
    helpers = {"money": money, "when": when, "short": short,
               "until": lambda value: until(value, moment)}
    return Template(template_name=f"user/{name}", status_code=status, headers=_HEADERS,
                    context={**context, "f": helpers})


def _error_page(status: int, title: str, detail: str, code: str) -> Template:
    return _page("error.html", {"status": status, "title": title, "detail": detail,
                                "code": code}, status=status)


def _to_sign_in(request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    clear = [_cookie(request, "", 0)] if request.cookies.get(COOKIE) else None
    return Redirect(path=SIGN_IN_PATH, status_code=303, headers=_HEADERS, cookies=clear)


def _csrf_refused(_request: Request[Any, Any, Any], _exc: Exception) -> Response[Any]:
    return _error_page(403, "This form has expired",
                       "It was not sent from your signed-in page, so nothing was changed. "
                       "Go back, reload the page and try again.", "csrf_token_invalid")


def _zpay_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, NotFound):
        return _error_page(404, "Not found", "There is no such session key for the wallet "
                           "you signed in with.", exc.code)
    assert isinstance(exc, ZpayError)
    from zpay.api.errors import problem_for

    status, body = problem_for(exc)
    return _error_page(status, "That did not work", body["detail"], exc.code)


# ------------------------------------------------------------------ handlers


class UserSignIn(Controller):
    """The sign-in page and its two JSON calls (problem+json on refusal)."""

    path = "/me/sign-in"
    include_in_schema = False

    @get()
    async def page(self, request: Request[Any, Any, Any]) -> Response[Any]:
        ctx = context_of(request)
        if await user_sessions.resolve(ctx, request.cookies.get(COOKIE)) is not None:
            return Redirect(path="/me", status_code=303, headers=_HEADERS)
        families = user_sessions.signin_families(ctx)
        return _page("signin.html", {"families": families})

    @post("/challenge", status_code=200)
    async def challenge(self, data: ChallengeBody, request: Request[Any, Any, Any]
                        ) -> dict[str, Any]:
        scheme, host = _origin(request)
        return await user_sessions.issue_challenge(
            context_of(request), family=data.family, address=data.address, domain=host,
            uri=f"{scheme}://{host}/me")

    @post(status_code=200)
    async def sign_in(self, data: SignInBody, request: Request[Any, Any, Any]
                      ) -> Response[dict[str, Any]]:
        _scheme, host = _origin(request)
        signed = await user_sessions.sign_in(context_of(request), message=data.message,
                                             signature=data.signature, domain=host)
        max_age = int(user_sessions.SESSION_TTL.total_seconds())  # expires_at - now
        return Response({"object": "user_session", "wallet": signed.wallet,
                         "family": signed.family.value, "redirect": "/me"},
                        headers={"Cache-Control": "no-store"},
                        cookies=[_cookie(request, signed.token, max_age)])


class UserPages(Controller):
    """What a signed-in wallet sees and does."""

    path = "/me"
    include_in_schema = False
    dependencies = {"user": Provide(provide_user)}
    exception_handlers = {NotSignedIn: _to_sign_in, CsrfRefused: _csrf_refused,
                          ZpayError: _zpay_error}

    @get()
    async def sessions(self, request: Request[Any, Any, Any], user: WalletUser,
                       revoked: str | None = None) -> Template:
        keys = await user_sessions.my_keys(context_of(request), user)
        notice = None
        if revoked and any(k["id"] == revoked for k in keys):
            notice = revoked
        return _page("sessions.html", {"user": user, "keys": keys, "totals": _totals(keys),
                                       "revoked": notice}, now=context_of(request).now())

    @get("/keys/{key_id:str}")
    async def key(self, key_id: str, request: Request[Any, Any, Any],
                  user: WalletUser) -> Template:
        view = await user_sessions.my_key(context_of(request), user, key_id)
        return _page("key.html", {"user": user, "key": view}, now=context_of(request).now())

    @post("/keys/{key_id:str}/revoke", status_code=303)
    async def revoke(self, key_id: str, request: Request[Any, Any, Any],
                     user: WalletUser) -> Redirect:
        await checked_form(request, user.csrf_token)
        await user_sessions.revoke_key(context_of(request), user, key_id)
        return Redirect(path=f"/me?revoked={key_id}#{key_id}", status_code=303,
                        headers=_HEADERS)

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any], user: WalletUser) -> Redirect:
        await checked_form(request, user.csrf_token)
        await user_sessions.sign_out(context_of(request), user)
        return Redirect(path=SIGN_IN_PATH, status_code=303, headers=_HEADERS,
                        cookies=[_cookie(request, "", 0)])


def user_handlers() -> list[Any]:
    return [UserSignIn, UserPages]
