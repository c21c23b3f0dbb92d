"""The six tools, driven with the `mcp` client over stdio (`zpay mcp` as a subprocess) and
over streamable HTTP (`/mcp` of `zpay serve`), on SQLite and PostgreSQL: exactly six, none
that can revoke, top up, link or change limits; what each answers; refusals with zpay's
reason code and what is left; books == chain after paying."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from mcp import MCPError

from tests.mcp.conftest import TRANSPORTS, Agent, connect, recipient
from zpay.mcp.tools import TOOL_NAMES
from zpay.services.context import AppContext

SIX = {"whoami", "can_afford", "pay", "pay_x402", "get_payment", "list_payments"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exactly_six_tools_and_none_can_change_limits(served: str, agent: Agent,
                                                            transport: str) -> None:
    async with connect(transport, served, agent.token) as mcp:
        tools = {t.name: t for t in await mcp.tools()}
        assert set(tools) == SIX == set(TOOL_NAMES)
        for name in ("revoke_session_key", "top_up", "link_session", "unlink_session",
                     "create_session", "update_limits", "rotate_token"):
            unknown = await mcp.call(name, session_key_id=agent.key_id)
            assert unknown.error and "unknown tool" in unknown.body["error"]["message"].lower()
        # Arguments a tool does not declare are no back door either.
        sneaky = await mcp.call("can_afford", session_key_id=agent.key_id, amount="1",
                                max_per_transaction="1000", status="revoked")
        assert not sneaky.error and sneaky.body["allowed"]

    for tool in tools.values():
        assert tool.description and len(tool.description) > 60, tool.name
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), (tool.name, name)
    pay = tools["pay"].input_schema
    assert set(pay["required"]) == {"session_key_id", "amount", "recipient", "idempotency_key"}
    assert "SAME idempotency_key" in pay["properties"]["idempotency_key"]["description"]
    assert pay["properties"]["amount"]["type"] == "string"  # a decimal string, never a number
    assert set(tools["pay_x402"].input_schema["required"]) == {"url", "session_key_id",
                                                               "max_amount"}
    for name in ("whoami", "can_afford", "get_payment", "list_payments"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.read_only_hint, name

    key = await agent.merchant.ok("GET", f"/v1/session-keys/{agent.key_id}")
    assert key["status"] == "active" and key["linked_session_id"] == agent.session_id
    session = await agent.merchant.ok("GET", f"/v1/sessions/{agent.session_id}")
    assert session["status"] == "active" and D(session["max_per_transaction"]) == 25
    assert D(session["max_per_day"]) == 100


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_whoami_can_afford_pay_refusal_and_reads(ctx: AppContext, served: str,
                                                       agent: Agent, transport: str) -> None:
    shop = recipient()
    async with connect(transport, served, agent.token) as mcp:
        me = await mcp.call("whoami")
        assert not me.error, me.body
        assert me.body["agent_id"] == agent.agent_id
        (key,) = me.body["session_keys"]
        assert key["id"] == agent.key_id and key["status"] == "active" and key["can_pay"]
        assert D(key["remaining_amount"]) == 500 and key["expires_at"]
        policy = key["policy"]
        assert policy["id"] == agent.session_id
        assert D(policy["limits"]["max_per_transaction"]) == 25
        assert D(policy["windows"]["day"]["limit"]) == 100
        assert D(policy["windows"]["day"]["remaining"]) == 100

        check = await mcp.call("can_afford", session_key_id=agent.key_id, amount="30")
        assert not check.error
        assert (check.body["allowed"], check.body["reason"]) == (False, "per_transaction_limit")
        assert D(check.body["effective_limit"]) == 25
        check = await mcp.call("can_afford", session_key_id=agent.key_id, amount="20",
                               recipient=shop)
        assert (check.body["allowed"], check.body["reason"]) == (True, "approved")

        paid = await mcp.call("pay", session_key_id=agent.key_id, amount="20", recipient=shop,
                              idempotency_key="order-1", description="two books")
        assert not paid.error, paid.body
        assert paid.body["status"] == "succeeded" and D(paid.body["amount"]) == 20
        assert paid.body["tx_id"] and paid.body["replayed"] is False

        # Books == chain: the recipient holds on chain exactly what zpay says it paid.
        adapter = ctx.chains.get("solana-local")
        assert await adapter.balance(shop, adapter.token("USDC")) == 20 * 10**6

        # The retry of the same purchase (same idempotency key) pays nothing more.
        again = await mcp.call("pay", session_key_id=agent.key_id, amount="20", recipient=shop,
                               idempotency_key="order-1", description="two books")
        assert not again.error and again.body["id"] == paid.body["id"]
        assert again.body["replayed"] is True
        assert await adapter.balance(shop, adapter.token("USDC")) == 20 * 10**6

        refused = await mcp.call("pay", session_key_id=agent.key_id, amount="30",
                                 recipient=shop, idempotency_key="order-2")
        assert refused.error and refused.code == "per_transaction_limit"
        left = refused.body["left"]
        assert set(left) == {"session_key_remaining", "effective_limit",
                             "session_remaining_today", "session_remaining_week",
                             "session_remaining_month"}
        assert D(left["session_key_remaining"]) == 480 and D(left["effective_limit"]) == 25
        assert D(left["session_remaining_today"]) == 80
        assert left["session_remaining_week"] is None  # the policy has no weekly limit
        for n in range(3):  # 20 + 3 * 25 = 95 today: 5 left of the day's 100
            ok = await mcp.call("pay", session_key_id=agent.key_id, amount="25", recipient=shop,
                                idempotency_key=f"order-{3 + n}")
            assert not ok.error, ok.body
        daily = await mcp.call("pay", session_key_id=agent.key_id, amount="10", recipient=shop,
                               idempotency_key="order-9")
        assert daily.error and daily.code == "daily_limit"
        assert D(daily.body["left"]["session_remaining_today"]) == 5
        assert await adapter.balance(shop, adapter.token("USDC")) == 95 * 10**6

        got = await mcp.call("get_payment", payment_id=paid.body["id"])
        assert not got.error and got.body["id"] == paid.body["id"]
        assert got.body["status"] == "succeeded"
        listed = await mcp.call("list_payments", session_key_id=agent.key_id, limit=2)
        assert not listed.error and len(listed.body["data"]) == 2 and listed.body["has_more"]
        everything = await mcp.call("list_payments")
        assert {p["id"] for p in everything.body["data"]} >= {paid.body["id"]}
        assert len(everything.body["data"]) == 4

        me = await mcp.call("whoami")
        (key,) = me.body["session_keys"]
        assert D(key["remaining_amount"]) == 405 and D(key["spent_amount"]) == 95
        assert D(key["policy"]["windows"]["day"]["remaining"]) == 5

        missing = await mcp.call("get_payment", payment_id="pay_doesnotexist")
        assert missing.error and missing.code and missing.code.endswith("not_found")
        bad = await mcp.call("pay", session_key_id=agent.key_id, amount="1.0000001",
                             recipient=shop, idempotency_key="order-10")
        assert bad.error and bad.code == "amount_precision_exceeded"

        # The merchant revokes the key (no tool can): the agent sees it and cannot pay.
        await agent.merchant.ok("POST", f"/v1/session-keys/{agent.key_id}/revoke")
        (key,) = (await mcp.call("whoami")).body["session_keys"]
        assert key["status"] == "revoked" and key["can_pay"] is False
        revoked = await mcp.call("pay", session_key_id=agent.key_id, amount="1",
                                 recipient=shop, idempotency_key="order-11")
        assert revoked.error and revoked.code == "session_key_revoked"

        # The token is checked on every call: rotating it stops this MCP session at once.
        await agent.merchant.ok("POST", f"/v1/agents/{agent.agent_id}/rotate-token")
        if transport == "http":
            with pytest.raises(MCPError):  # /mcp answers 401: no tool runs
                await mcp.call("whoami")
            return
        refused = await mcp.call("pay", session_key_id=agent.key_id, amount="1",
                                 recipient=shop, idempotency_key="after-rotation")
        assert refused.error and refused.code == "invalid_credentials"
        assert refused.body["http_status"] == 401 and agent.token not in str(refused.body)
