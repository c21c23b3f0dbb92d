"""`zpay mcp`: the tools over stdio, for a desktop MCP client that starts it as a command.

It reads `ZPAY_URL` (default http://127.0.0.1:8000) and `ZPAY_AGENT_TOKEN` (an agent
token, or a policy session's `as_` token) and talks to that zpay over HTTP. stdout
carries the protocol: nothing else is ever printed there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import httpx

from zpay.domain import tokens

DEFAULT_URL = "http://127.0.0.1:8000"
AGENT_KINDS = frozenset({"agent", "as"})
FETCH_TIMEOUT_S = 30.0


def check_token(token: str | None) -> str | None:
    """Why this token cannot run the MCP server, or None. Checked before any request: a
    merchant's secret key would give the model powers an agent must not have."""
    if not token:
        return "ZPAY_AGENT_TOKEN is not set: give the MCP server the agent's token"
    kind = tokens.parse_kind(token)
    if kind is None:
        return "ZPAY_AGENT_TOKEN is not a zpay token (agent_…)"
    if kind not in AGENT_KINDS:
        return ("ZPAY_AGENT_TOKEN is a merchant secret key; the MCP server runs only with an "
                "agent token (agent_…) or a policy session token (as_…)")
    return None


def run(environ: Mapping[str, str] | None = None, *, url: str | None = None) -> int:
    """Serve until stdin closes; `url` overrides `ZPAY_URL` (`zpay --url … mcp`)."""
    import anyio

    env = os.environ if environ is None else environ
    token = env.get("ZPAY_AGENT_TOKEN")
    problem = check_token(token)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    assert token is not None
    anyio.run(_serve, token, url or env.get("ZPAY_URL") or DEFAULT_URL)
    return 0


async def _serve(token: str, url: str) -> None:
    from zpay.client import AsyncZpay
    from zpay.mcp.tools import Backend, build_server

    async with AsyncZpay(token, base_url=url) as zpay, \
            httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as http:
        server = build_server(Backend(zpay=lambda: zpay, http=lambda: http))
        await server.run_stdio_async()
