"""`POST /v1/x402/payments`: both layers exactly as a payment, what zpay refuses to pay or
sign, Idempotency-Key replays, v1 bodies, and settlement reports taken as claims only.
Both databases; the chain is a real anvil (evm-local)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from eth_account import Account
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Payload

from tests.x402.conftest import Shop, decoded, v2_required


async def attempts(shop: Shop) -> list[dict[str, Any]]:
    return list((await shop.api.ok("GET", f"/v1/session-keys/{shop.key_id}/attempts"))["data"])


async def test_v2_payment_is_held_signed_and_replayed_once(shop: Shop) -> None:
    required = v2_required(shop, amount=10_000)
    idem = str(uuid.uuid4())
    first = await shop.pay_x402(required, idem)
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["status"], body["amount"], body["recipient"]) == (
        "submitted", "0.010000", shop.pay_to)
    assert body["header_name"] == "PAYMENT-SIGNATURE"
    payload = decoded(body["header_value"])
    assert payload["x402Version"] == 2
    assert payload["accepted"] == decoded(required)["accepts"][0]  # as received
    auth = payload["payload"]["authorization"]
    assert (auth["from"], auth["to"], auth["value"]) == (
        shop.key["session_key_address"], shop.pay_to, "10000")
    # The signature is the session wallet's, by x402's own EIP-712 hashing.
    usdc = shop.ctx.chains.get("evm-local").token("USDC")
    parsed = ExactEIP3009Payload.from_dict(payload["payload"]).authorization
    digest = hash_eip3009_authorization(parsed, 31337,
                                        usdc.address, usdc.eip712_name or "",
                                        usdc.eip712_version or "")
    signer = Account._recover_hash(digest, signature=payload["payload"]["signature"])
    assert signer == shop.key["session_key_address"]

    again = await shop.pay_x402(required, idem)  # the same request again
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (200, "true")
    assert (again.json()["id"], again.json()["header_value"]) == (body["id"],
                                                                  body["header_value"])
    tampered = await shop.pay_x402(v2_required(shop, amount=20_000), idem)
    assert (tampered.status_code, tampered.json()["code"]) == (422, "idempotency_key_reused")

    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.010000"  # ONE hold
    assert [a["allowed"] for a in await attempts(shop)] == [True]
    view = await shop.agent.ok("GET", f"/v1/x402/payments/{body['id']}")
    assert view["x402"]["pay_to"] == shop.pay_to and "header_value" not in view


async def test_both_layers_refuse_as_for_a_payment(shop: Shop) -> None:
    await shop.link(max_per_transaction="0.02", max_per_day="0.03",
                    allowed_recipients=[shop.pay_to])
    over = await shop.pay_x402(v2_required(shop, amount=25_000), str(uuid.uuid4()))
    assert (over.status_code, over.json()["code"]) == (402, "per_transaction_limit")
    ok = await shop.pay_x402(v2_required(shop, amount=20_000), str(uuid.uuid4()))
    assert ok.status_code == 201, ok.text
    day = await shop.pay_x402(v2_required(shop, amount=20_000), str(uuid.uuid4()))
    assert (day.status_code, day.json()["code"]) == (402, "daily_limit")
    stranger = Account.create().address
    other = await shop.pay_x402(v2_required(shop, amount=1_000, pay_to=stranger),
                                str(uuid.uuid4()))
    assert (other.status_code, other.json()["code"]) == (402, "recipient_not_allowed")
    reasons = [a["reason"] for a in await attempts(shop)]
    assert sorted(reasons) == sorted(["per_transaction_limit", "approved", "daily_limit",
                                      "recipient_not_allowed"])
    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.020000"


async def test_chains_outside_the_session_are_refused(shop: Shop) -> None:
    from sqlalchemy import update

    from zpay.store.models import PolicySession

    session = await shop.link(allowed_chains=["evm-local"])
    ok = await shop.pay_x402(v2_required(shop), str(uuid.uuid4()))
    assert ok.status_code == 201, ok.text
    # The session now allows another chain only (only evm-local is enabled here, so the
    # API would not create it: the row is changed directly).
    async with shop.ctx.db.transaction() as s:
        await s.execute(update(PolicySession).where(PolicySession.id == session["id"])
                        .values(allowed_chains=["solana-local"]))
    refused = await shop.pay_x402(v2_required(shop), str(uuid.uuid4()))
    assert (refused.status_code, refused.json()["code"]) == (402, "chain_not_allowed")


async def test_what_zpay_cannot_pay_or_sign(shop: Shop) -> None:
    usdc = shop.ctx.chains.get("evm-local").token("USDC")
    cases = {
        "x402_unsupported_network": v2_required(shop, network="eip155:8453"),
        "x402_unsupported_asset": v2_required(shop, asset="0x" + "12" * 20),
        "x402_domain_mismatch": v2_required(shop, extra={"name": "USD Coin",
                                                         "version": "2"}),
        "flow_not_supported": v2_required(shop, extra={
            "name": usdc.eip712_name, "version": usdc.eip712_version,
            "assetTransferMethod": "permit2"}),
        "x402_requirements_invalid": base64.b64encode(b'{"x402Version": 2}').decode(),
    }
    for code, required in cases.items():
        refused = await shop.pay_x402(required, str(uuid.uuid4()))
        assert (refused.status_code, refused.json()["code"]) == (422, code), refused.text
    missing = await shop.agent.post("/v1/x402/payments", {
        "session_key_id": shop.key_id, "payment_required": v2_required(shop)})
    assert missing.json()["code"] == "idempotency_key_missing"
    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.000000"


async def test_v1_body_gets_an_x_payment_header(shop: Shop) -> None:
    usdc = shop.ctx.chains.get("evm-local").token("USDC")
    body = {"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{
        "scheme": "exact", "network": "evm-local", "maxAmountRequired": "5000",
        "resource": "http://shop.example/v1", "payTo": shop.pay_to, "maxTimeoutSeconds": 60,
        "asset": usdc.address, "extra": {"name": usdc.eip712_name,
                                         "version": usdc.eip712_version}}]}
    paid = await shop.pay_x402(body, str(uuid.uuid4()))
    assert paid.status_code == 201, paid.text
    assert paid.json()["header_name"] == "X-PAYMENT"
    payload = decoded(paid.json()["header_value"])
    assert (payload["x402Version"], payload["scheme"], payload["network"]) == (
        1, "exact", "evm-local")
    assert payload["payload"]["authorization"]["value"] == "5000"


async def test_a_settlement_report_is_a_claim_never_evidence(shop: Shop) -> None:
    paid = (await shop.pay_x402(v2_required(shop), str(uuid.uuid4()))).json()
    forged = base64.b64encode(json.dumps({
        "success": True, "transaction": "0x" + "ab" * 32, "network": "eip155:31337",
        "payer": shop.key["session_key_address"]}).encode()).decode()
    answer = await shop.agent.post(f"/v1/x402/payments/{paid['id']}/settlement",
                                   {"payment_response": forged})
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "submitted"
    assert answer.json()["x402"]["reported_tx"] == "0x" + "ab" * 32
    status = await shop.books_equal_chain()
    assert (status["held_amount"], status["spent_amount"]) == ("0.010000", "0.000000")


async def test_other_merchants_and_revoked_keys(shop: Shop) -> None:
    from tests.support import merchant_api

    paid = (await shop.pay_x402(v2_required(shop), str(uuid.uuid4()))).json()
    other = await merchant_api(shop.ctx, shop.api.http, "other")
    assert (await other.get(f"/v1/x402/payments/{paid['id']}")).status_code == 404
    await shop.api.ok("POST", f"/v1/session-keys/{shop.key_id}/revoke")
    refused = await shop.pay_x402(v2_required(shop), str(uuid.uuid4()))
    assert refused.status_code in (401, 402)


async def test_concurrent_replays_of_one_key_hold_once(shop: Shop) -> None:
    import asyncio

    required, idem = v2_required(shop, amount=30_000), str(uuid.uuid4())
    answers = await asyncio.gather(*(shop.pay_x402(required, idem) for _ in range(4)))
    paid = [a.json() for a in answers if a.status_code in (200, 201)]
    assert paid, [a.text for a in answers]
    assert {a.status_code for a in answers} <= {200, 201, 409}
    assert len({p["id"] for p in paid}) == 1  # one payment, one header
    assert len({p["header_value"] for p in paid}) == 1
    status = await shop.books_equal_chain()
    assert status["held_amount"] == "0.030000"
    assert [a["allowed"] for a in await attempts(shop)] == [True]
