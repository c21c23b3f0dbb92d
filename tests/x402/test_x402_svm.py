"""x402 `exact` on Solana, on LiteSVM (solana-local), with the facilitator of
tests/x402/svm_facilitator.py (every check of the spec's scheme_exact_svm; x402's own SVM
facilitator cannot be installed beside zpay: its `svm` extra pins solana<0.40). An agent
pays through zpay, the facilitator verifies and settles, zpay captures from the chain,
books == chain; a payment never settled is released once its blockhash lapsed."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair
from solders.transaction import VersionedTransaction

from tests.jobs.support import Clock
from tests.support import Api, active_key, merchant_api
from tests.x402.svm_facilitator import SvmFacilitator
from zpay.chains.solana import SolanaAdapter
from zpay.jobs.reconcile import RECHECK_AFTER, reconcile_payments
from zpay.services.context import AppContext
from zpay.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("solana-local",),
                               default_chain="solana-local")


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        yield client


@dataclasses.dataclass
class SvmShop:
    ctx: AppContext
    api: Api
    agent: Api
    key: dict[str, Any]
    pay_to: str
    facilitator: SvmFacilitator

    @property
    def adapter(self) -> SolanaAdapter:
        adapter = self.ctx.chains.get("solana-local")
        assert isinstance(adapter, SolanaAdapter)
        return adapter

    async def usdc_of(self, owner: str) -> int:
        return await self.adapter.balance(owner, self.adapter.token("USDC"))

    def required(self, amount: int = 10_000, **extra: Any) -> str:
        usdc = self.adapter.token("USDC")
        doc = {"x402Version": 2, "resource": {"url": "http://shop.example/svm"},
               "accepts": [{"scheme": "exact", "network": "solana:zpay-local",
                            "asset": usdc.address, "amount": str(amount),
                            "payTo": self.pay_to, "maxTimeoutSeconds": 60,
                            "extra": {**self.facilitator.extra(), **extra}}]}
        return base64.b64encode(json.dumps(doc).encode()).decode()

    async def pay(self, required: str) -> dict[str, Any]:
        resp = await self.agent.post("/v1/x402/payments", {
            "session_key_id": self.key["id"], "payment_required": required},
            **{"Idempotency-Key": str(uuid.uuid4())})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    async def books_equal_chain(self) -> dict[str, Any]:
        status = await self.api.ok("GET", f"/v1/session-keys/{self.key['id']}")
        on_chain = await self.usdc_of(status["session_key_address"])
        remaining = int(status["remaining_amount"].replace(".", ""))
        held = int(status["held_amount"].replace(".", ""))
        assert on_chain == remaining + held, (on_chain, status)
        return status


@pytest.fixture
async def svm(ctx: AppContext, http: httpx.AsyncClient) -> SvmShop:
    ctx.clock = Clock()
    api = await merchant_api(ctx, http)
    agent, key, _user = await active_key(api, ctx, max_amount="1")
    adapter = ctx.chains.get("solana-local")
    assert isinstance(adapter, SolanaAdapter) and adapter.local_chain is not None
    chain = adapter.local_chain
    facilitator = SvmFacilitator(chain)
    with chain._locked():  # the facilitator's SOL for fees (test set-up)
        chain._svm.airdrop(facilitator.fee_payer.pubkey(), 10**9)
    merchant = str(Keypair().pubkey())
    await adapter.faucet(merchant, adapter.token("USDC"), 1)  # its token account exists
    return SvmShop(ctx, api, api.as_(agent["token"]), key, merchant, facilitator)


def payload_of(paid: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(paid["header_value"])))


async def test_agent_pays_on_solana_and_zpay_captures_from_the_chain(svm: SvmShop) -> None:
    paid = await svm.pay(svm.required(10_000))
    assert paid["status"] == "submitted" and paid["header_name"] == "PAYMENT-SIGNATURE"
    payload = payload_of(paid)
    tx = VersionedTransaction.from_bytes(base64.b64decode(payload["payload"]["transaction"]))
    # Partially signed: the facilitator's fee-payer signature is still missing.
    assert tx.message.account_keys[0] == svm.facilitator.fee_payer.pubkey()
    assert str(tx.message.account_keys[1]) == svm.key["session_key_address"]
    assert len(tx.message.instructions) == 4  # limit, price, TransferChecked, memo
    requirement = payload["accepted"]
    assert svm.facilitator.verify(payload, requirement) == {
        "isValid": True, "payer": svm.key["session_key_address"]}
    status = await svm.books_equal_chain()
    assert status["held_amount"] == "0.010000"

    settled = svm.facilitator.settle(payload, requirement)
    assert settled["success"], settled
    assert svm.facilitator.settle(payload, requirement)["errorReason"] == "duplicate_settlement"
    report = base64.b64encode(json.dumps(settled).encode()).decode()
    answer = await svm.agent.post(f"/v1/x402/payments/{paid['id']}/settlement",
                                  {"payment_response": report})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    assert answer.json()["tx_id"] == settled["transaction"]  # the facilitator's tx id
    assert await svm.usdc_of(svm.pay_to) == 1 + 10_000
    status = await svm.books_equal_chain()
    assert (status["spent_amount"], status["held_amount"]) == ("0.010000", "0.000000")


async def test_the_facilitator_refuses_what_the_spec_forbids(svm: SvmShop) -> None:
    paid = await svm.pay(svm.required(10_000, memo="invoice-42"))
    payload = payload_of(paid)
    requirement = payload["accepted"]
    assert svm.facilitator.verify(payload, requirement)["isValid"]  # memo = extra.memo

    def reason(req: dict[str, Any]) -> str:
        return str(svm.facilitator.verify(payload, req).get("invalidReason"))

    assert reason({**requirement, "amount": "10001"}) == (
        "invalid_exact_svm_payload_amount_mismatch")
    assert reason({**requirement, "payTo": str(Keypair().pubkey())}) == (
        "invalid_exact_svm_payload_recipient_mismatch")
    assert reason({**requirement, "extra": {**requirement["extra"], "memo": "other"}}) == (
        "invalid_exact_svm_payload_memo_mismatch")
    other = SvmFacilitator(svm.facilitator.chain)
    assert other.verify(payload, {**requirement, "extra": other.extra()})["invalidReason"] == (
        "invalid_exact_svm_payload_missing_fee_payer")
    # A signed payload whose amount is changed no longer carries a valid client signature.
    tx = VersionedTransaction.from_bytes(base64.b64decode(payload["payload"]["transaction"]))
    raw = bytearray(bytes(tx))
    at = raw.find(bytes([12]) + (10_000).to_bytes(8, "little"))
    raw[at + 1:at + 9] = (10_001).to_bytes(8, "little")
    forged = {**payload, "payload": {"transaction": base64.b64encode(bytes(raw)).decode()}}
    assert svm.facilitator.verify(forged, {**requirement, "amount": "10001"})[
        "invalidReason"] == "invalid_exact_svm_payload_signature"


async def test_zpay_refuses_a_fee_payer_it_must_not_sign_for(svm: SvmShop) -> None:
    for extra in ({"feePayer": svm.key["session_key_address"]},
                  {"feePayer": str(svm.adapter._fee_payer.pubkey())}):
        required = svm.required(10_000)
        doc = json.loads(base64.b64decode(required))
        doc["accepts"][0]["extra"] = extra
        resp = await svm.agent.post("/v1/x402/payments", {
            "session_key_id": svm.key["id"],
            "payment_required": base64.b64encode(json.dumps(doc).encode()).decode()},
            **{"Idempotency-Key": str(uuid.uuid4())})
        assert (resp.status_code, resp.json()["code"]) == (422, "x402_fee_payer_invalid")
    status = await svm.books_equal_chain()
    assert status["held_amount"] == "0.000000"


async def test_never_settled_is_released_once_its_blockhash_lapsed(svm: SvmShop) -> None:
    paid = await svm.pay(svm.required(600_000))
    status = await svm.books_equal_chain()
    assert status["held_amount"] == "0.600000"
    clock = svm.ctx.clock
    assert isinstance(clock, Clock)
    clock.advance(seconds=RECHECK_AFTER.total_seconds() + 1)
    await reconcile_payments(svm.ctx)  # the blockhash is still valid: it may land
    payment = await svm.agent.ok("GET", f"/v1/x402/payments/{paid['id']}")
    assert payment["status"] == "submitted"

    svm.adapter.advance_blockhash()  # the chain moves past its last valid block height
    clock.advance(seconds=RECHECK_AFTER.total_seconds() + 1)
    await reconcile_payments(svm.ctx)
    payment = await svm.agent.ok("GET", f"/v1/x402/payments/{paid['id']}")
    assert payment["status"] == "failed"
    # The facilitator cannot land it any more either.
    late = svm.facilitator.settle(payload_of(paid), payload_of(paid)["accepted"])
    assert late["errorReason"] == "invalid_exact_svm_payload_blockhash_expired"
    status = await svm.books_equal_chain()
    assert (status["held_amount"], status["spent_amount"]) == ("0.000000", "0.000000")

    again = await svm.pay(svm.required(600_000))  # spendable again
    settled = svm.facilitator.settle(payload_of(again), payload_of(again)["accepted"])
    assert settled["success"], settled
    clock.advance(seconds=RECHECK_AFTER.total_seconds() + 1)
    await reconcile_payments(svm.ctx)  # no report: found by the session wallet's signature
    payment = await svm.agent.ok("GET", f"/v1/x402/payments/{again['id']}")
    assert payment["status"] == "succeeded"
    assert await svm.usdc_of(svm.pay_to) == 1 + 600_000
    await svm.books_equal_chain()
