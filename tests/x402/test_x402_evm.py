"""x402 against the REAL reference implementation (the `x402` package's resource-server
middleware and its facilitator with the EVM `exact` scheme) on evm-local: an agent pays
through zpay, the resource is served, the facilitator settles, zpay captures from the
chain, and the books equal the chain (balances read from anvil). Both databases."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx
import pytest

from tests.x402.conftest import Shop, decoded
from tests.x402.support import RESOURCE_BODY, x402_resource_server
from zpay.cli import main as cli_main
from zpay.client.aio import AsyncZpay
from zpay.client.x402 import X402AmountExceeded, afetch_with_payment

pytestmark = pytest.mark.slow  # x402's servers and facilitator beside zpay and anvil


async def test_agent_pays_a_resource_through_zpay_books_equal_chain(
        shop: Shop, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = shop.ctx.chains.get("evm-local")
    async with x402_resource_server(adapter, pay_to=shop.pay_to,  # type: ignore[arg-type]
                                    amount_base_units=10_000) as url:
        async with AsyncZpay(shop.agent_token, base_url=shop.url) as zpay:
            result = await afetch_with_payment(zpay, url, session_key_id=shop.key_id,
                                               max_amount="0.05")
        assert result.response.status_code == 200, result.response.text
        assert result.response.json() == RESOURCE_BODY
        payment = result.payment
        assert payment is not None
        # The facilitator answered after its receipt; the report made zpay look at the
        # chain, which shows the authorization used: captured.
        assert payment.status == "succeeded", payment.raw
        [settled] = url.settlements
        assert settled.success and settled.transaction == payment.settlement_tx
        assert payment.raw["x402"]["network"] == "eip155:31337"
        assert payment.raw["x402"]["reported_tx"] == settled.transaction

        # Again with the SYNC helper, through `zpay x402 get` (in a thread: zpay is
        # served by this event loop).
        code = await asyncio.to_thread(cli_main, [
            "x402", "get", url, "--session-key", shop.key_id, "--max-amount", "0.05",
            "--url", shop.url, "--api-key", shop.agent_token, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out) == RESOURCE_BODY
        assert json.loads(err.strip().splitlines()[-1])["status"] == "succeeded"

    assert await shop.usdc_of(shop.pay_to) == 20_000
    status = await shop.books_equal_chain()
    assert (status["spent_amount"], status["held_amount"]) == ("0.020000", "0.000000")
    listed = await shop.agent.ok("GET", "/v1/payments", session_key_id=shop.key_id)
    assert sorted(p["status"] for p in listed["data"]) == ["succeeded", "succeeded"]
    assert {p["recipient"] for p in listed["data"]} == {shop.pay_to}


async def test_a_resource_that_is_never_settled_is_released_after_its_validity(
        shop: Shop) -> None:
    """The facilitator never settles: the hold stays (it may still land) until a block is
    stamped past validBefore — then it is released and the funds pay again."""
    adapter = shop.ctx.chains.get("evm-local")
    async with x402_resource_server(adapter, pay_to=shop.pay_to,  # type: ignore[arg-type]
                                    amount_base_units=600_000, settle=False) as url:
        async with AsyncZpay(shop.agent_token, base_url=shop.url) as zpay:
            result = await afetch_with_payment(zpay, url, session_key_id=shop.key_id,
                                               max_amount="1")
        assert result.response.status_code == 402  # not served: it did not settle
        assert result.payment is not None and result.payment.status == "submitted"
        assert [s.success for s in url.settlements] == [False]
    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.600000"
    # 0.6 of 1 is held: a second 0.6 cannot be afforded while the first may still land.
    second = await shop.agent.pay(shop.key_id, "0.6", shop.pay_to)
    assert second.json()["code"] == "insufficient_session_balance"

    await shop.reconcile_after_chain_time(30)  # well before validBefore: still pending
    payment = await shop.agent.ok("GET", f"/v1/x402/payments/{result.payment.id}")
    assert payment["status"] == "submitted"

    await shop.reconcile_after_chain_time(200)  # a block stamped past validBefore
    payment = await shop.agent.ok("GET", f"/v1/x402/payments/{result.payment.id}")
    assert (payment["status"], payment["failure_code"]) == ("failed", "authorization_expired")
    status = await shop.books_equal_chain()
    assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")
    assert await shop.usdc_of(shop.pay_to) == 0

    # Spendable again: the same 0.6 pays a (settling) resource now.
    async with (
        x402_resource_server(adapter, pay_to=shop.pay_to,  # type: ignore[arg-type]
                             amount_base_units=600_000) as url,
        AsyncZpay(shop.agent_token, base_url=shop.url) as zpay,
    ):
        again = await afetch_with_payment(zpay, url, session_key_id=shop.key_id,
                                          max_amount="1")
    assert again.response.status_code == 200 and again.payment is not None
    assert again.payment.status == "succeeded"
    assert await shop.usdc_of(shop.pay_to) == 600_000
    await shop.books_equal_chain()


async def test_tampered_requirements_are_not_served_and_never_captured(shop: Shop) -> None:
    """The amount is changed between the 402 and the payment (a cheaper one is signed):
    x402's server refuses it, nothing lands, and the hold is released from the chain."""
    adapter = shop.ctx.chains.get("evm-local")
    async with x402_resource_server(adapter, pay_to=shop.pay_to,  # type: ignore[arg-type]
                                    amount_base_units=10_000) as url:
        async with httpx.AsyncClient(timeout=30) as client:
            first = await client.get(url)
            doc = decoded(first.headers["PAYMENT-REQUIRED"])
            doc["accepts"][0]["amount"] = "1"  # tampered
            tampered = base64.b64encode(json.dumps(doc).encode()).decode()
            paid = await shop.pay_x402(tampered, str(uuid.uuid4()))
            assert paid.status_code == 201, paid.text
            body = paid.json()
            assert body["amount"] == "0.000001"
            retried = await client.get(url, headers={body["header_name"]: body["header_value"]})
        assert retried.status_code == 402  # x402's server: not what it asked for
        assert url.settlements == []
    await shop.reconcile_after_chain_time(200)
    payment = await shop.agent.ok("GET", f"/v1/x402/payments/{body['id']}")
    assert payment["status"] == "failed"
    status = await shop.books_equal_chain()
    assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")


async def test_max_amount_guard_refuses_before_anything_is_held(shop: Shop) -> None:
    adapter = shop.ctx.chains.get("evm-local")
    async with (
        x402_resource_server(adapter, pay_to=shop.pay_to,  # type: ignore[arg-type]
                             amount_base_units=200_000) as url,
        AsyncZpay(shop.agent_token, base_url=shop.url) as zpay,
    ):
        with pytest.raises(X402AmountExceeded) as refused:
            await afetch_with_payment(zpay, url, session_key_id=shop.key_id,
                                      max_amount="0.1")
    assert (str(refused.value.required), str(refused.value.max_amount)) == (
        "0.200000", "0.100000")
    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.000000"
    attempts = await shop.api.ok("GET", f"/v1/session-keys/{shop.key_id}/attempts")
    assert attempts["data"] == []
