"""Test helpers: a small HTTP driver for the whole flow, with a user wallet that signs."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from zpay.client.wallet import SolanaWallet
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve(ctx: AppContext) -> AsyncIterator[str]:
    """Serve the app for `ctx` with uvicorn on a loopback port, in this event loop."""
    from zpay.api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(context=ctx), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Api:
    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http, self.token = http, token

    def as_(self, token: str) -> Api:
        return Api(self.http, token)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return await self.http.post(path, json=body if body is not None else {},
                                    headers=self._headers(headers))

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self._headers())

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers=self._headers())

    async def ok(self, method: str, path: str, body: Any = None, status: int | None = None,
                 **kw: Any) -> dict[str, Any]:
        if method == "GET":
            resp = await self.get(path, **kw)
        elif method == "DELETE":
            resp = await self.delete(path)
        else:
            resp = await self.post(path, body, **kw)
        assert resp.status_code < 300 if status is None else resp.status_code == status, (
            resp.status_code, resp.text)
        return dict(resp.json())

    async def pay(self, key_id: str, amount: str, recipient: str,
                  idem: str | None = None) -> httpx.Response:
        return await self.http.post(
            "/v1/payments", json={"session_key_id": key_id, "amount": amount,
                                  "recipient": recipient},
            headers=self._headers({"Idempotency-Key": idem or str(uuid.uuid4())}))


async def merchant_api(ctx: AppContext, http: httpx.AsyncClient, name: str = "shop") -> Api:
    created = await create_merchant(ctx, name)
    return Api(http, created.api_key)


async def funded_user(ctx: AppContext, amount_base_units: int) -> SolanaWallet:
    wallet = SolanaWallet.generate()
    adapter = ctx.chains.get("solana-local")
    await adapter.faucet(wallet.address, adapter.token("USDC"), amount_base_units)
    return wallet


async def active_key(api: Api, ctx: AppContext, *, max_amount: str = "500",
                     session_id: str | None = None,
                     agent: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any],
                                                                   SolanaWallet]:
    """Agent + funded, approved session key. Returns (agent, key status, user wallet)."""
    agent = agent or await api.ok("POST", "/v1/agents", {"name": "shopper"})
    user = await funded_user(ctx, 10_000 * 10**6)
    body: dict[str, Any] = {"agent_id": agent["id"], "user_wallet": user.address,
                            "max_amount": max_amount, "expires_in_seconds": 3600}
    if session_id:
        body["session_id"] = session_id
    key = await api.ok("POST", "/v1/session-keys", body)
    assert key["status"] == "pending_approval"
    status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval",
                          user.sign_approval(key))
    assert status["status"] == "active"
    return agent, status, user


def spent_within_limits(results: list[tuple[int, str]], *, funds: int, day: int) -> int:
    """What concurrent payments of (amount, final status or refusal code) on ONE key funded
    with `funds` and allowed `day` a day paid, checked exact: never more than both allow,
    and, since capacity only shrank during the run, every refusal asked for more than was
    left then, so for more than is left now — nothing allowed was refused."""
    spent = sum(amount for amount, status in results if status == "succeeded")
    refused = [(amount, status) for amount, status in results if status != "succeeded"]
    assert spent <= min(funds, day)
    left = min(funds, day) - spent
    assert refused and all(amount > left for amount, _ in refused), (left, refused)
    assert {code for _, code in refused} <= {"daily_limit", "insufficient_session_balance"}
    return spent
