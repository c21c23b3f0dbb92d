"""Retries, idempotency keys, typed errors and money handling, against a scripted transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from zpay.client import (
    APIConnectionError,
    AsyncZpay,
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PaymentRefused,
    PermissionDenied,
    ServerError,
    ServiceUnavailable,
    Zpay,
    ZpayError,
)

Handler = Callable[[httpx.Request], httpx.Response]

PAYMENT = {"id": "pay_1", "object": "payment", "status": "succeeded", "session_key_id": "skey_1",
           "amount": "12.500000", "recipient": "merchant"}


def problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"status": status, "code": code, "detail": f"{code}!"},
                          headers={"content-type": "application/problem+json",
                                   **(headers or {})})


class Script:
    """Answers requests in order; records what was sent."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, **kw: object) -> Zpay:
    return Zpay("sk_test_x", base_url="http://zpay.test", retry_backoff_s=0,
                transport=httpx.MockTransport(script), **kw)  # type: ignore[arg-type]


def test_payment_retries_reuse_one_idempotency_key() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                    problem(503, "chain_unavailable"),
                    problem(409, "idempotency_request_in_flight"),
                    httpx.Response(201, json=PAYMENT))
    payment = client(script, max_retries=4).payments.create("skey_1", Decimal("12.5"),
                                                            "merchant")
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 5 and len(keys) == 1
    assert payment.idempotency_key == keys.pop()
    assert json.loads(script.requests[0].content)["amount"] == "12.5"
    assert payment.amount == Decimal("12.5") and isinstance(payment.amount, Decimal)
    assert script.requests[0].headers["Authorization"] == "Bearer sk_test_x"


def test_a_replayed_answer_is_not_retried_and_is_marked() -> None:
    script = Script(httpx.Response(201, json=PAYMENT, headers={"Idempotent-Replayed": "true"}))
    payment = client(script).payments.create("skey_1", "12.5", "merchant",
                                             idempotency_key="order-7")
    assert payment.replayed and payment.idempotency_key == "order-7"
    stored_503 = Script(problem(503, "chain_unavailable", {"Idempotent-Replayed": "true"}))
    with pytest.raises(ServiceUnavailable):
        client(stored_503).payments.create("skey_1", "1", "m", idempotency_key="order-8")
    assert len(stored_503.requests) == 1


def test_a_non_idempotent_create_is_not_resent_after_it_may_have_arrived() -> None:
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(APIConnectionError) as err:
        client(script).agents.create("shopper")
    assert len(script.requests) == 1 and err.value.status is None
    # ...but a connection that never opened is retried: nothing was sent.
    script = Script(httpx.ConnectError("refused"),
                    httpx.Response(200, json={"id": "agt_1", "name": "a", "status": "active"}))
    assert client(script).agents.create("shopper").id == "agt_1"


def test_retries_stop_after_max_retries_and_honour_retry_after() -> None:
    script = Script(*[problem(503, "chain_unavailable", {"Retry-After": "0"})] * 3)
    with pytest.raises(ServiceUnavailable) as err:
        client(script, max_retries=2).session_keys.get_status("skey_1")
    assert len(script.requests) == 3 and err.value.code == "chain_unavailable"


@pytest.mark.parametrize(("status", "code", "cls"), [
    (402, "daily_limit", PaymentRefused), (401, "agent_frozen", AuthenticationError),
    (403, "merchant_key_required", PermissionDenied), (404, "session_key_not_found", NotFound),
    (409, "session_key_not_live", Conflict), (422, "approval_mismatch", InvalidRequest),
    (502, "transfer_failed", ServerError), (418, "teapot", ZpayError),
])
def test_problems_become_typed_errors(status: int, code: str, cls: type[ZpayError]) -> None:
    with pytest.raises(cls) as err:
        client(Script(problem(status, code))).session_keys.get_status("skey_1")
    assert (err.value.code, err.value.status, err.value.detail) == (code, status, f"{code}!")
    assert code in str(err.value)


def test_non_json_errors_still_carry_a_code() -> None:
    with pytest.raises(ServerError) as err:
        client(Script(httpx.Response(500, text="boom"))).agents.get("agt_1")
    assert (err.value.code, err.value.detail) == ("http_500", "boom")


def test_money_never_passes_through_float() -> None:
    with pytest.raises(TypeError):
        client(Script()).payments.create("skey_1", 0.1, "m")  # type: ignore[arg-type]
    body = {**PAYMENT, "amount": 12.5}  # a float on the wire still arrives as Decimal
    payment = client(Script(httpx.Response(201, json=body))).payments.create("skey_1", "1", "m")
    assert payment.amount == Decimal("12.5") and isinstance(payment.amount, Decimal)


def test_ids_cannot_escape_their_path() -> None:
    script = Script(problem(404, "agent_not_found"))
    with pytest.raises(NotFound):
        client(script).agents.get("../session-keys")
    assert script.requests[0].url.raw_path == b"/v1/agents/..%2Fsession-keys"


def test_pagination_follows_next_cursor() -> None:
    def page(ids: list[str], more: bool) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "has_more": more,
                                         "next_cursor": ids[-1] if more else None,
                                         "data": [{"id": i, "type": "t"} for i in ids]})

    script = Script(page(["e3", "e2"], True), page(["e1"], False))
    assert [e.id for e in client(script).events.list(limit=2)] == ["e3", "e2", "e1"]
    assert [r.url.params.get("starting_after") for r in script.requests] == [None, "e2"]
    assert script.requests[0].url.params["limit"] == "2"
    first = client(Script(page(["e3", "e2"], True))).events.list(limit=2).first_page()
    assert (len(first.data), first.has_more, first.next_cursor) == (2, True, "e2")


async def test_async_client_retries_the_same_way() -> None:
    script = Script(httpx.ConnectError("refused"), problem(503, "chain_unavailable"),
                    httpx.Response(201, json=PAYMENT))
    async with AsyncZpay("sk_test_x", base_url="http://zpay.test", retry_backoff_s=0,
                         transport=httpx.MockTransport(script)) as zpay:
        payment = await zpay.payments.create("skey_1", "12.5", "merchant")
        assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1
        assert payment.status == "succeeded"
        script.answers.append(problem(402, "per_transaction_limit"))
        with pytest.raises(PaymentRefused) as err:
            await zpay.payments.create("skey_1", "500", "merchant")
        assert err.value.code == "per_transaction_limit"
