"""Who may use the tools: an agent's token (or its policy session's `as_` token), never a
merchant key, and never a token that was rotated or belongs to a frozen agent."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import httpx
import pytest

from tests.mcp.conftest import ZPAY, Agent, http_mcp_auto, recipient
from zpay.mcp.http import _caller, _InProcess
from zpay.mcp.stdio import check_token

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


async def post_mcp(http: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    return await http.post("/mcp", json=INIT, headers=headers)


async def test_http_refuses_merchant_keys_and_dead_tokens_before_any_tool(
        http: httpx.AsyncClient, agent: Agent) -> None:
    assert (await post_mcp(http, agent.token)).status_code == 200

    missing = await post_mcp(http, None)
    assert missing.status_code == 401 and missing.json()["code"] == "missing_credentials"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    garbage = await post_mcp(http, "agent_test_notarealtoken")
    assert garbage.status_code == 401 and garbage.json()["code"] == "invalid_credentials"

    merchant = await post_mcp(http, agent.merchant.token)
    assert merchant.status_code == 403 and merchant.json()["code"] == "agent_token_required"
    assert agent.merchant.token not in merchant.text

    await agent.merchant.ok("POST", f"/v1/agents/{agent.agent_id}/freeze")
    frozen = await post_mcp(http, agent.token)
    assert frozen.status_code == 401 and frozen.json()["code"] == "agent_frozen"
    await agent.merchant.ok("POST", f"/v1/agents/{agent.agent_id}/unfreeze")

    rotated = await agent.merchant.ok("POST", f"/v1/agents/{agent.agent_id}/rotate-token")
    old = await post_mcp(http, agent.token)
    assert old.status_code == 401 and old.json()["code"] == "invalid_credentials"
    assert agent.token not in old.text
    assert (await post_mcp(http, rotated["token"])).status_code == 200


async def test_http_a_session_token_sees_only_its_linked_key(served: str, agent: Agent) -> None:
    async with http_mcp_auto(served, agent.session_token) as mcp:
        # The modern revision (server/discover, no initialize handshake) over /mcp.
        assert mcp.session.discover_result is not None, mcp.session.initialize_result
        me = await mcp.call("whoami")
        assert not me.error, me.body
        assert [k["id"] for k in me.body["session_keys"]] == [agent.key_id]
        paid = await mcp.call("pay", session_key_id=agent.key_id, amount="1",
                              recipient=recipient(), idempotency_key="as-1")
        assert not paid.error and paid.body["status"] == "succeeded"


@pytest.mark.slow
def test_stdio_refuses_to_start_with_a_merchant_key_or_no_token() -> None:
    from zpay.domain import tokens

    merchant_key = tokens.generate("sk", "test")
    assert "merchant secret key" in (check_token(merchant_key) or "")
    assert check_token(None) and check_token("agent_test_malformed")
    assert check_token(tokens.generate("agent", "test")) is None
    assert check_token(tokens.generate("as", "live")) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    for token in (merchant_key, ""):
        done = subprocess.run([str(ZPAY), "mcp"], env={**env, "ZPAY_AGENT_TOKEN": token},
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 2
        assert done.stdout == ""  # stdout is the protocol's: errors go to stderr
        assert "ZPAY_AGENT_TOKEN" in done.stderr
        assert token == "" or token not in done.stderr


async def test_the_tools_calls_count_against_the_mcp_clients_own_address() -> None:
    """Rate limits per address see the agent's address, not one shared loopback."""
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["client"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with httpx.AsyncClient(transport=_InProcess(app),  # type: ignore[arg-type]
                                 base_url="http://zpay.internal") as client:
        reset = _caller.set(("203.0.113.7", 4242))
        try:
            assert (await client.get("/v1/payments")).status_code == 204
        finally:
            _caller.reset(reset)
        await client.get("/v1/payments")
    assert [tuple(c) for c in seen] == [("203.0.113.7", 4242), ("127.0.0.1", 0)]
