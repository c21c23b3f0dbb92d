"""A payment that ended `failed` is answered 402 with the payment inside: the SDK raises
`PaymentFailed` carrying it (sync and async), and `zpay payments create` exits 1 with it."""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal

import httpx
import pytest

from zpay import cli
from zpay.client import AsyncZpay, PaymentFailed, PaymentRefused, Zpay

FAILED = {"id": "pay_1", "object": "payment", "status": "failed", "session_key_id": "skey_1",
          "amount": "3.000000", "recipient": "merchant", "failure_code": "transfer_failed"}


def _answer(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(402, json={"status": 402, "code": "transfer_failed",
                                     "detail": "the payment failed", "payment": FAILED},
                          headers={"content-type": "application/problem+json"})


def _refused(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(402, json={"status": 402, "code": "daily_limit", "detail": "no"},
                          headers={"content-type": "application/problem+json"})


def test_sync_sdk_raises_payment_failed_with_the_payment() -> None:
    z = Zpay("sk_test_x", base_url="http://zpay.test", transport=httpx.MockTransport(_answer))
    with pytest.raises(PaymentFailed) as failed:
        z.payments.create("skey_1", "3", "merchant", idempotency_key="order-1")
    assert isinstance(failed.value, PaymentRefused)  # `except PaymentRefused` still catches it
    assert (failed.value.code, failed.value.status) == ("transfer_failed", 402)
    payment = failed.value.payment
    assert (payment.id, payment.status, payment.amount) == ("pay_1", "failed", Decimal("3"))
    assert payment.failure_code == "transfer_failed"
    # A plain refusal (no payment was made) stays a PaymentRefused, not a PaymentFailed.
    z = Zpay("sk_test_x", base_url="http://zpay.test", transport=httpx.MockTransport(_refused))
    with pytest.raises(PaymentRefused) as refused:
        z.payments.create("skey_1", "3", "merchant")
    assert not isinstance(refused.value, PaymentFailed)


def test_async_sdk_raises_payment_failed_with_the_payment() -> None:
    async def run() -> None:
        z = AsyncZpay("sk_test_x", base_url="http://zpay.test",
                      transport=httpx.MockTransport(_answer))
        with pytest.raises(PaymentFailed) as failed:
            await z.payments.create("skey_1", "3", "merchant")
        assert failed.value.payment.id == "pay_1"

    asyncio.run(run())


def test_cli_prints_the_failed_payment_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    z = Zpay("sk_test_x", base_url="http://zpay.test", transport=httpx.MockTransport(_answer))
    args = argparse.Namespace(session_key_id="skey_1", amount="3", recipient="merchant",
                              description=None, idempotency_key=None, no_wait=False,
                              timeout=1.0, json=True)
    assert cli._payments_create(args, z) == 1
    out, err = capsys.readouterr()
    assert '"pay_1"' in out and "transfer_failed" in err
