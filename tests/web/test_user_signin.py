"""Signing in to /me with a wallet, over HTTP: what opens a session and what is refused.

The browser tests (test_user_sessions.py) drive the page; these pin every refusal with its
problem+json code, on SQLite and PostgreSQL: a replayed nonce, another domain, an expired
message, another wallet's signature, a nonce zpay never issued; and the session cookie,
CSRF and expiry of what a signed-in user can do.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
from datetime import timedelta
from typing import Any

import httpx
from solders.keypair import Keypair

from tests.support import active_key, merchant_api
from zpay.domain import signin
from zpay.services.context import AppContext

PROBLEM = "application/problem+json"


def solana_signature(keypair: Keypair, message: str) -> str:
    return base64.b64encode(bytes(keypair.sign_message(message.encode()))).decode()


async def challenge(http: httpx.AsyncClient, address: str,
                    family: str = "solana") -> dict[str, Any]:
    resp = await http.post("/me/sign-in/challenge", json={"family": family, "address": address})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def submit(http: httpx.AsyncClient, message: str, signature: str) -> httpx.Response:
    return await http.post("/me/sign-in", json={"message": message, "signature": signature})


def refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert resp.json()["code"] == code
    assert "set-cookie" not in resp.headers


async def test_a_signed_siws_message_opens_a_session(http: httpx.AsyncClient,
                                                     served: str) -> None:
    user = Keypair()
    issued = await challenge(http, str(user.pubkey()))
    host = served.removeprefix("http://")
    parsed = signin.parse(issued["message"])
    assert (parsed.domain, parsed.address, parsed.chain_id, parsed.nonce) == (
        host, str(user.pubkey()), "solana:localnet", issued["nonce"])
    assert parsed.uri == f"{served}/me"

    resp = await submit(http, issued["message"], solana_signature(user, issued["message"]))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"object": "user_session", "wallet": str(user.pubkey()),
                           "family": "solana", "redirect": "/me"}
    cookie = resp.headers["set-cookie"]
    assert re.match(r"zpay_user=[A-Za-z0-9_\-]{40,};", cookie)
    for attribute in ("HttpOnly", "Path=/me", "SameSite=Strict", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain http on loopback; Secure over TLS

    page = await http.get("/me")
    assert page.status_code == 200
    assert "No session keys yet" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_refusals(http: httpx.AsyncClient, ctx: AppContext, served: str) -> None:
    user, other = Keypair(), Keypair()
    host = served.removeprefix("http://")

    # a replayed nonce: the same signed message twice
    issued = await challenge(http, str(user.pubkey()))
    signature = solana_signature(user, issued["message"])
    assert (await submit(http, issued["message"], signature)).status_code == 200
    http.cookies.clear()
    refused(await submit(http, issued["message"], signature), 401, "signin_nonce_used")

    # another domain: a phishing site relays zpay's nonce in a message naming itself
    issued = await challenge(http, str(user.pubkey()))
    phished = dataclasses.replace(signin.parse(issued["message"]), domain="zpay.evil.example",
                                  uri="https://zpay.evil.example/me").text()
    refused(await submit(http, phished, solana_signature(user, phished)), 401,
            "signin_domain_mismatch")
    # ... and the nonce it carried is still unused: the real message still signs in
    ok = await submit(http, issued["message"], solana_signature(user, issued["message"]))
    assert ok.status_code == 200
    http.cookies.clear()

    # another wallet's signature of the message naming `user`
    issued = await challenge(http, str(user.pubkey()))
    refused(await submit(http, issued["message"], solana_signature(other, issued["message"])),
            401, "signin_signature_invalid")
    # a signature of another text, and garbage
    refused(await submit(http, issued["message"], solana_signature(user, "hello")), 401,
            "signin_signature_invalid")
    refused(await submit(http, issued["message"], "not base64!"), 401,
            "signin_signature_invalid")

    # a message zpay did not issue the nonce of
    forged = dataclasses.replace(signin.parse(issued["message"]),
                                 nonce=signin.new_nonce()).text()
    refused(await submit(http, forged, solana_signature(user, forged)), 401,
            "signin_nonce_invalid")

    # an expired message: signed, then submitted after its Expiration Time
    issued = await challenge(http, str(user.pubkey()))
    signature = solana_signature(user, issued["message"])
    real_clock = ctx.clock
    ctx.clock = lambda: real_clock() + timedelta(minutes=10, seconds=1)
    try:
        refused(await submit(http, issued["message"], signature), 401, "signin_expired")
    finally:
        ctx.clock = real_clock

    # not a sign-in message at all; a chain this deployment does not serve
    refused(await submit(http, "hello", solana_signature(user, "hello")), 422,
            "signin_message_invalid")
    other_chain = dataclasses.replace(signin.parse(issued["message"]),
                                      chain_id="solana:mainnet").text()
    refused(await submit(http, other_chain, solana_signature(user, other_chain)), 401,
            "signin_chain_unsupported")

    # challenges for what cannot sign in here
    resp = await http.post("/me/sign-in/challenge", json={"family": "evm",
                                                          "address": "0x" + "11" * 20})
    refused(resp, 422, "signin_chain_unsupported")  # this deployment serves no EVM chain
    resp = await http.post("/me/sign-in/challenge", json={"family": "solana", "address": "x"})
    refused(resp, 422, "invalid_address")
    assert host  # the served host is what every accepted message named


async def test_public_url_decides_the_domain(ctx: AppContext, served: str) -> None:
    """Behind a proxy the Host header may be anything; `public_url` names the domain."""
    real = ctx.settings
    ctx.settings = dataclasses.replace(real, public_url="https://pay.example")
    try:
        async with httpx.AsyncClient(base_url=served) as http:
            issued = await challenge(http, str(Keypair().pubkey()))
            parsed = signin.parse(issued["message"])
            assert (parsed.domain, parsed.uri) == ("pay.example", "https://pay.example/me")
            user = Keypair()
            issued = await challenge(http, str(user.pubkey()))
            resp = await submit(http, issued["message"],
                                solana_signature(user, issued["message"]))
            assert resp.status_code == 200
            assert "secure" in resp.headers["set-cookie"].lower()
            # a message naming the Host the request came to is another domain here
            wrong = dataclasses.replace(signin.parse(issued["message"]),
                                        domain=served.removeprefix("http://"),
                                        uri=f"{served}/me").text()
            refused(await submit(http, wrong, solana_signature(user, wrong)), 401,
                    "signin_domain_mismatch")
    finally:
        ctx.settings = real


async def sign_in(http: httpx.AsyncClient, user: Keypair) -> None:
    issued = await challenge(http, str(user.pubkey()))
    resp = await submit(http, issued["message"], solana_signature(user, issued["message"]))
    assert resp.status_code == 200, resp.text


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert match, html[:2000]
    return match.group(1)


async def test_forms_need_the_sessions_csrf_token_and_a_live_session(
        http: httpx.AsyncClient, ctx: AppContext, served: str) -> None:
    api = await merchant_api(ctx, http)
    _agent, key, wallet = await active_key(api, ctx, max_amount="50")
    await sign_in(http, wallet.keypair)
    page = await http.get("/me")
    assert key["id"] in page.text
    token = csrf_of(page.text)

    for form in ({}, {"csrf_token": "0" * 64}):
        resp = await http.post(f"/me/keys/{key['id']}/revoke", data=form)
        assert resp.status_code == 403 and "csrf_token_invalid" in resp.text
    assert (await api.ok("GET", f"/v1/session-keys/{key['id']}"))["status"] == "active"

    # another wallet's key: not found, by URL and by form, and left alone
    _, theirs, _ = await active_key(api, ctx, max_amount="5")
    resp = await http.get(f"/me/keys/{theirs['id']}")
    assert resp.status_code == 404 and "session_key_not_found" in resp.text
    resp = await http.post(f"/me/keys/{theirs['id']}/revoke", data={"csrf_token": token})
    assert resp.status_code == 404 and theirs["id"] not in (await http.get("/me")).text
    assert (await api.ok("GET", f"/v1/session-keys/{theirs['id']}"))["status"] == "active"

    # another browser (no cookie) with the right token: sent to sign in, nothing done
    async with httpx.AsyncClient(base_url=served) as stranger:
        resp = await stranger.post(f"/me/keys/{key['id']}/revoke", data={"csrf_token": token})
        assert resp.status_code == 303 and resp.headers["location"] == "/me/sign-in"
        assert (await stranger.get("/me")).headers["location"] == "/me/sign-in"
    assert (await api.ok("GET", f"/v1/session-keys/{key['id']}"))["status"] == "active"

    # signing out ends the session on the server, not just in this browser
    cookie = http.cookies["zpay_user"]
    resp = await http.post("/me/sign-out", data={"csrf_token": token})
    assert resp.status_code == 303
    async with httpx.AsyncClient(base_url=served, cookies={"zpay_user": cookie}) as replay:
        resp = await replay.get("/me")
        assert resp.status_code == 303 and resp.headers["location"] == "/me/sign-in"

    # a session ends at its expiry
    await sign_in(http, wallet.keypair)
    assert (await http.get("/me")).status_code == 200
    real_clock = ctx.clock
    ctx.clock = lambda: real_clock() + timedelta(hours=12, seconds=1)
    try:
        resp = await http.get("/me")
        assert resp.status_code == 303 and resp.headers["location"] == "/me/sign-in"
    finally:
        ctx.clock = real_clock


async def test_one_nonce_signs_in_once_even_concurrently(http: httpx.AsyncClient) -> None:
    user = Keypair()
    issued = await challenge(http, str(user.pubkey()))
    signature = solana_signature(user, issued["message"])
    answers = await asyncio.gather(*(submit(http, issued["message"], signature)
                                     for _ in range(4)))
    codes = sorted((r.status_code, r.json().get("code")) for r in answers)
    assert codes == [(200, None), *[(401, "signin_nonce_used")] * 3], codes
