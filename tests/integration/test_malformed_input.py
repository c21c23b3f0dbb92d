"""The malformed-input corpus, on both databases: deep nesting, invalid UTF-8, NUL
characters, over-long strings and bodies, other content types, unknown filter values and
impossible recipients. Every answer is a 4xx problem+json with a stable code, unauthenticated
requests are 401 whatever they carry, and nothing is written (every table counted)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from solders.keypair import Keypair
from sqlalchemy import func, select

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext
from zpay.store.models import Base

JSON = {"content-type": "application/json"}


# Operational bookkeeping of every request, not data a request writes.
NOT_DATA = frozenset({"rate_limit_counters"})


async def _all_rows(ctx: AppContext) -> dict[str, int]:
    async with ctx.db.sessions() as s:
        return {t.name: (await s.execute(select(func.count()).select_from(t))).scalar_one()
                for t in Base.metadata.sorted_tables if t.name not in NOT_DATA}


def _nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


def _raw(http: httpx.AsyncClient, method: str, path: str, content: bytes | None = None,
         token: str | None = None, headers: dict[str, str] | None = None) -> Any:
    h = dict(headers if headers is not None else JSON)
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return http.request(method, path, content=content, headers=h)


async def test_malformed_input_corpus(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, user = await active_key(api, ctx, max_amount="10")
        sk, at = api.token, agent["token"]
        pay = {"session_key_id": key["id"], "amount": "1", "recipient": str(Keypair().pubkey())}
        endpoint = {"url": "https://example.com/hook"}
        before = await _all_rows(ctx)

        def body(value: Any) -> bytes:
            return json.dumps(value).encode()

        # (method, path, body bytes, token, headers, status, code)
        corpus: list[tuple[str, str, bytes | None, str | None, dict[str, str] | None, int,
                           str]] = [
            # nesting: 2,000 deep (RecursionError in a JSON decoder) and just past the limit
            ("POST", "/v1/agents", _nested(2000), sk, None, 400, "malformed_json"),
            ("POST", "/v1/payments", b'{"session_key_id": ' + b"[" * 2000 + b"]" * 2000 + b"}",
             at, {**JSON, "Idempotency-Key": "n1"}, 400, "malformed_json"),
            ("POST", f"/v1/session-keys/{key['id']}/approval",
             b'{"typed_data": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", sk, None, 400,
             "malformed_json"),
            ("POST", "/v1/sessions", _nested(33), sk, None, 400, "malformed_json"),
            # not JSON, not UTF-8
            ("POST", "/v1/agents", b'{"name": "\xff\xfe"}', sk, None, 400, "malformed_json"),
            ("POST", "/v1/agents", b'{"name": "a"', sk, None, 400, "malformed_json"),
            ("POST", "/v1/agents", b"\xc3\x28", sk, None, 400, "malformed_json"),
            # NUL in a string of the body, the path, the query
            ("POST", "/v1/agents", body({"name": "a\x00b"}), sk, None, 422,
             "invalid_characters"),
            ("POST", "/v1/payments", body({**pay, "description": "x\x00"}), at,
             {**JSON, "Idempotency-Key": "n2"}, 422, "invalid_characters"),
            ("POST", "/v1/sessions", body({"agent_id": agent["id"], "timezone": "UTC\x00"}), sk,
             None, 422, "invalid_characters"),
            ("POST", "/v1/webhook-endpoints", body({**endpoint, "desc\x00": 1}), sk, None, 422,
             "invalid_characters"),
            ("GET", "/v1/agents/agt%00x", None, sk, None, 422, "invalid_characters"),
            ("GET", f"/v1/session-keys/{key['id']}%00", None, at, None, 422,
             "invalid_characters"),
            ("GET", "/v1/session-keys?status=active%00", None, sk, None, 422,
             "invalid_characters"),
            ("GET", "/v1/payments?starting_after=pay%00", None, sk, None, 422,
             "invalid_characters"),
            ("GET", "/v1/events?object_id=%00", None, sk, None, 422, "invalid_characters"),
            ("POST", "/v1/payments?x=%00", body(pay), at, {**JSON, "Idempotency-Key": "n3"}, 422,
             "invalid_characters"),
            # longer than documented (PostgreSQL refused it with a 500, SQLite stored it)
            ("POST", "/v1/payments", body({**pay, "description": "d" * 501}), at,
             {**JSON, "Idempotency-Key": "n4"}, 422, "invalid_request"),
            ("POST", "/v1/webhook-endpoints", body({**endpoint, "description": "d" * 501}), sk,
             None, 422, "invalid_request"),
            ("POST", "/v1/webhook-endpoints", body({**endpoint, "description": "d" * 100_000}),
             sk, None, 413, "request_body_too_large"),
            ("POST", "/v1/agents", body({"name": "n" * 1_000_000}), sk, None, 413,
             "request_body_too_large"),
            ("POST", "/v1/agents", body({"name": "n" * 201}), sk, None, 422, "invalid_request"),
            ("POST", "/v1/sessions", body({"agent_id": agent["id"], "user_wallet": "w" * 101}),
             sk, None, 422, "invalid_request"),
            ("POST", "/v1/session-keys", body({"agent_id": agent["id"], "user_wallet":
                                               user.address, "max_amount": "1",
                                               "expires_in_seconds": 600, "chain": "c" * 41}),
             sk, None, 422, "invalid_request"),
            ("POST", "/v1/payments", body({**pay, "session_key_id": "s" * 41}), at,
             {**JSON, "Idempotency-Key": "n5"}, 422, "invalid_request"),
            # JSON sent as something else
            ("POST", "/v1/agents", body({"name": "a"}), sk, {"content-type": "text/plain"}, 415,
             "unsupported_media_type"),
            ("POST", "/v1/agents", b"name=a", sk,
             {"content-type": "application/x-www-form-urlencoded"}, 415,
             "unsupported_media_type"),
            ("POST", "/v1/payments", body(pay), at,
             {"content-type": "text/plain", "Idempotency-Key": "n6"}, 415,
             "unsupported_media_type"),
            ("POST", "/v1/agents", body({"name": "a"}), sk, {}, 415, "unsupported_media_type"),
            # unknown filter values
            ("GET", "/v1/session-keys?status=bogus", None, sk, None, 422, "invalid_status"),
            ("GET", "/v1/webhook-endpoints/we_x/deliveries?status=bogus", None, sk, None, 422,
             "invalid_status"),
            ("GET", "/v1/events?type=bogus", None, sk, None, 422, "unknown_event_type"),
            ("GET", "/v1/payments?limit=0", None, sk, None, 422, "invalid_limit"),
            ("GET", "/v1/payments?limit=abc", None, sk, None, 422, "invalid_request"),
            # an impossible recipient: the session wallet itself
            ("POST", "/v1/payments", body({**pay, "recipient": key["session_key_address"]}), at,
             {**JSON, "Idempotency-Key": "n7"}, 422, "invalid_recipient"),
        ]
        for method, path, content, token, headers, status, code in corpus:
            resp = await _raw(http, method, path, content, token, headers)
            where = (method, path, (content or b"")[:60], code)
            assert resp.status_code == status, (where, resp.status_code, resp.text[:300])
            assert 400 <= resp.status_code < 500
            assert resp.headers["content-type"].startswith("application/problem+json"), where
            problem = resp.json()
            assert (problem["status"], problem["code"]) == (status, code), (where, problem)
            # Without credentials, the very same requests are 401: nothing was parsed first.
            bare = await _raw(http, method, path, content, None, headers)
            assert (bare.status_code, bare.json()["code"]) == (401, "missing_credentials"), (
                where, bare.text[:200])
            bad = await _raw(http, method, path, content, "sk_test_nope", headers)
            assert (bad.status_code, bad.json()["code"]) == (401, "invalid_credentials"), where
        assert await _all_rows(ctx) == before

        # The same requests, well formed, do work (the corpus tested the input, not the route).
        assert (await _raw(http, "POST", "/v1/agents", body({"name": "a" * 200}), sk,
                           {"content-type": "application/json; charset=utf-8"})
                ).status_code == 201
        resp = await _raw(http, "POST", "/v1/payments", body({**pay, "description": "d" * 500}),
                          at, {**JSON, "Idempotency-Key": "ok1"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["description"] == "d" * 500
