"""x402 requirements read as received (v1 and v2), the entry zpay pays, and the headers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from x402.http.utils import decode_payment_required_header, decode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentPayloadV1

from zpay.chains.registry import get_network
from zpay.domain import x402
from zpay.domain.x402 import X402Invalid, X402Unpayable

USDC_BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def entry(**over: Any) -> dict[str, Any]:
    return {"scheme": "exact", "network": "eip155:8453", "amount": "10000",
            "asset": USDC_BASE, "payTo": PAY_TO, "maxTimeoutSeconds": 60,
            "extra": {"name": "USD Coin", "version": "2"}, **over}


def v2(*entries: dict[str, Any]) -> str:
    doc = {"x402Version": 2, "resource": {"url": "https://api.example/x"},
           "accepts": list(entries)}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_v2_header_as_x402_writes_it() -> None:
    # Encoded by the x402 package itself: zpay reads what the reference writes.
    from x402.http.utils import encode_payment_required_header

    header = encode_payment_required_header(PaymentRequired(
        resource=ResourceInfo(url="https://api.example/x"),
        accepts=[PaymentRequirements.model_validate(entry())]))
    required = x402.parse_payment_required(header)
    assert required.version == 2 and required.request_header == "PAYMENT-SIGNATURE"
    [req] = required.accepts
    assert (req.amount, req.pay_to, req.network, req.max_timeout_s) == (
        10_000, PAY_TO, "eip155:8453", 60)
    assert required.resource_url() == "https://api.example/x"
    assert decode_payment_required_header(header).accepts[0].amount == "10000"


def test_v1_body() -> None:
    body = {"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{
        "scheme": "exact", "network": "base", "maxAmountRequired": "2500",
        "resource": "https://api.example/v1", "payTo": PAY_TO, "maxTimeoutSeconds": 30,
        "asset": USDC_BASE, "extra": {"name": "USD Coin", "version": "2"}}]}
    required = x402.parse_payment_required(body)
    assert required.version == 1 and required.request_header == "X-PAYMENT"
    req = x402.select(required, networks=get_network("base").x402_networks, asset=USDC_BASE)
    assert req.amount == 2500 and required.resource_url(req) == "https://api.example/v1"
    name, value = x402.payment_header(required, req, {"signature": "0x00"})
    parsed = decode_payment_signature_header(value)
    assert name == "X-PAYMENT" and isinstance(parsed, PaymentPayloadV1)
    assert (parsed.scheme, parsed.network, parsed.payload) == ("exact", "base",
                                                                {"signature": "0x00"})


def test_v2_payment_header_echoes_the_entry_as_received() -> None:
    raw = entry(extra={"name": "USD Coin", "version": "2", "anything": [1, 2]})
    required = x402.parse_payment_required(v2(raw))
    req = x402.select(required, networks=("eip155:8453",), asset=USDC_BASE.lower())
    name, value = x402.payment_header(required, req, {"authorization": {}, "signature": "0x"})
    parsed = decode_payment_signature_header(value)
    assert name == "PAYMENT-SIGNATURE" and isinstance(parsed, PaymentPayload)
    assert parsed.accepted.model_dump(by_alias=True) == PaymentRequirements.model_validate(
        raw).model_dump(by_alias=True)
    assert parsed.resource is not None and parsed.resource.url == "https://api.example/x"


def test_network_names_through_the_registry() -> None:
    assert get_network("evm-local").x402_networks == ("eip155:31337", "evm-local")
    assert get_network("base-sepolia").x402_networks == ("eip155:84532", "base-sepolia")
    assert get_network("solana-devnet").x402_networks[0] == (
        "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1")


def test_selection_picks_the_cheapest_payable_entry_and_names_misses() -> None:
    required = x402.parse_payment_required(v2(
        entry(scheme="upto"), entry(network="eip155:1"), entry(amount="30000"),
        entry(amount="20000")))
    assert x402.select(required, networks=("eip155:8453",), asset=USDC_BASE).amount == 20000

    def miss(*entries: dict[str, Any]) -> str:
        with pytest.raises(X402Unpayable) as refused:
            x402.select(x402.parse_payment_required(v2(*entries)), networks=("eip155:8453",),
                        asset=USDC_BASE)
        return refused.value.code

    assert miss(entry(scheme="upto")) == "x402_unsupported_scheme"
    assert miss(entry(network="eip155:1")) == "x402_unsupported_network"
    assert miss(entry(asset="0x" + "11" * 20)) == "x402_unsupported_asset"


@pytest.mark.parametrize("bad", [
    "not base64!", base64.b64encode(b"[1]").decode(),
    v2(entry(amount="1.5")), v2(entry(amount="-1")), v2(entry(amount=10000)),
    v2(entry(maxTimeoutSeconds=0)), v2(entry(payTo="")),
    base64.b64encode(json.dumps({"x402Version": 3, "accepts": [entry()]}).encode()).decode(),
    base64.b64encode(json.dumps({"x402Version": 2, "accepts": []}).encode()).decode(),
])
def test_malformed_requirements_are_refused(bad: str) -> None:
    with pytest.raises(X402Invalid):
        x402.parse_payment_required(bad)


def test_validity_is_capped() -> None:
    required = x402.parse_payment_required(v2(entry(maxTimeoutSeconds=10**9)))
    assert required.accepts[0].validity_s == x402.MAX_VALIDITY_S


def test_settlement_response_is_read_as_a_claim() -> None:
    from x402.http.utils import encode_payment_response_header
    from x402.schemas import SettleResponse

    value = encode_payment_response_header(SettleResponse(
        success=True, transaction="0x" + "ab" * 32, network="eip155:8453", payer=PAY_TO))
    report = x402.parse_settlement_response(value)
    assert (report.success, report.transaction, report.network) == (
        True, "0x" + "ab" * 32, "eip155:8453")
    with pytest.raises(X402Invalid):
        x402.parse_settlement_response(base64.b64encode(b'{"success": "yes"}').decode())
