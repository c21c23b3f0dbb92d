"""MCP clients for the tests: `zpay mcp` as a subprocess over stdio (the way a desktop MCP
client starts it), and `/mcp` of the served app over streamable HTTP, each with the `mcp`
package's own client. Plus an agent with a funded session key linked to a policy."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, Tool

from tests.support import Api, active_key
from zpay.client.wallet import SolanaWallet
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant
from zpay.settings import Settings

ZPAY = Path(sys.executable).with_name("zpay")  # the installed entry point
# stdio starts `zpay mcp` as a process: slow (scheduled first); http is in-process uvicorn.
TRANSPORTS = (pytest.param("stdio", marks=pytest.mark.slow), "http")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # pay_x402 over /mcp fetches from the server's network: the tests' resources are local.
    return dataclasses.replace(settings, mcp_allow_private_urls=True)


@dataclass(frozen=True)
class Answer:
    """One tool call's result: the JSON object the tool returned, and whether it is an error."""

    error: bool
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        return (self.body.get("error") or {}).get("code")


class Mcp:
    """An initialized MCP client session."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def tools(self) -> list[Tool]:
        return list((await self.session.list_tools()).tools)

    async def call(self, name: str, **arguments: Any) -> Answer:
        result = await self.session.call_tool(name, arguments)
        assert isinstance(result, CallToolResult)
        text = "".join(getattr(block, "text", "") for block in result.content)
        try:
            body = json.loads(text)
        except ValueError:  # the SDK's own errors (unknown tool, bad arguments) are plain text
            body = {"error": {"code": None, "message": text}}
        if result.structured_content is not None:
            assert result.structured_content == body  # the text block says the same
        return Answer(bool(result.is_error), body)


@asynccontextmanager
async def stdio_mcp(url: str, token: str) -> AsyncIterator[Mcp]:
    """`zpay mcp` as a subprocess, env ZPAY_URL and ZPAY_AGENT_TOKEN, like a desktop client."""
    params = StdioServerParameters(command=str(ZPAY), args=["mcp"],
                                   env={"ZPAY_URL": url, "ZPAY_AGENT_TOKEN": token})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield Mcp(session)


@asynccontextmanager
async def http_mcp(url: str, token: str | None) -> AsyncIterator[Mcp]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield Mcp(session)


@asynccontextmanager
async def http_mcp_auto(url: str, token: str) -> AsyncIterator[Mcp]:
    """The SDK's high-level `Client` in its default mode: it probes `server/discover` and
    speaks the newest protocol revision the server offers (stateless, per request)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        yield Mcp(client.session)


def connect(transport: str, url: str, token: str) -> Any:
    return stdio_mcp(url, token) if transport == "stdio" else http_mcp(url, token)


@dataclass(frozen=True)
class Agent:
    """A merchant's agent with one active key (500 USDC) linked to a policy session of
    max 25 per transaction and 100 per day."""

    merchant: Api
    agent_id: str
    token: str
    key_id: str
    session_id: str
    session_token: str


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


@pytest.fixture
async def agent(ctx: AppContext, http: httpx.AsyncClient) -> Agent:
    created = await create_merchant(ctx, "shop")
    merchant = Api(http, created.api_key)
    agent = await merchant.ok("POST", "/v1/agents", {"name": "shopper"})
    session = await merchant.ok("POST", "/v1/sessions", {
        "agent_id": agent["id"], "max_per_transaction": "25", "max_per_day": "100"})
    _, key, _ = await active_key(merchant, ctx, max_amount="500", session_id=session["id"],
                                 agent=agent)
    return Agent(merchant, agent["id"], agent["token"], key["id"], session["id"],
                 session["access_token"])


def recipient() -> str:
    return SolanaWallet.generate().address
