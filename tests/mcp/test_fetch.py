"""`pay_x402`'s fetching, against small local servers: a resource that needs no payment, a
402 without x402 requirements, a body larger than the tool returns — and, over `/mcp`
(where zpay's own server fetches), URLs on zpay's network refused before any connection
when `ZPAY_MCP_ALLOW_PRIVATE_URLS` is off. Both databases."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from tests.mcp.conftest import Agent, http_mcp, stdio_mcp
from tests.support import free_port
from zpay.mcp.tools import BODY_CHARS_MAX
from zpay.settings import Settings

BIG = "x" * (BODY_CHARS_MAX + 10)


async def shop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/free`: 200 text; `/big`: a long body; anything else: a bare 402 (no requirements)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    status, body = {"/free": (200, "hello agent"), "/big": (200, BIG)}.get(
        path, (402, '{"error": "pay me"}'))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


@asynccontextmanager
async def local_shop() -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(shop_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mcp_allow_private_urls=False)  # production's default


@pytest.mark.slow
async def test_stdio_fetches_what_needs_no_payment_and_reports_a_bare_402(
        served: str, agent: Agent) -> None:
    """stdio runs beside the agent: it fetches what the agent could fetch itself."""
    async with local_shop() as shop, stdio_mcp(served, agent.token) as mcp:
        free = await mcp.call("pay_x402", url=f"{shop}/free", session_key_id=agent.key_id,
                              max_amount="1")
        assert not free.error, free.body
        assert free.body["status_code"] == 200 and free.body["body"] == "hello agent"
        assert free.body["payment"] is None and free.body["body_truncated"] is False

        big = await mcp.call("pay_x402", url=f"{shop}/big", session_key_id=agent.key_id,
                             max_amount="1", method="POST", body='{"q": 1}')
        assert not big.error, big.body
        assert len(big.body["body"]) == BODY_CHARS_MAX and big.body["body_truncated"]

        bare = await mcp.call("pay_x402", url=f"{shop}/paid", session_key_id=agent.key_id,
                              max_amount="1")
        assert bare.error and bare.code == "x402_requirements_missing", bare.body

        gone = await mcp.call("pay_x402", url=f"http://127.0.0.1:{free_port()}/x",
                              session_key_id=agent.key_id, max_amount="1")
        assert gone.error and gone.code == "x402_fetch_failed"
        listed = await mcp.call("list_payments")
        assert listed.body["data"] == []  # nothing was paid


async def test_http_never_fetches_from_zpays_own_network(served: str, agent: Agent) -> None:
    async with local_shop() as shop, http_mcp(served, agent.token) as mcp:
        for url in (f"{shop}/free", f"{served}/health", "http://169.254.169.254/latest/",
                    "http://10.0.0.1/", "http://[::1]:80/", "http://0x7f000001/",
                    "http://localhost:1/"):
            refused = await mcp.call("pay_x402", url=url, session_key_id=agent.key_id,
                                     max_amount="1")
            assert refused.error and refused.code == "url_not_allowed", (url, refused.body)
        listed = await mcp.call("list_payments")
        assert listed.body["data"] == []
