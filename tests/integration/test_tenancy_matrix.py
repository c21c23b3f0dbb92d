"""The tenancy matrix, generated from the OpenAPI document: every operation with an id in
its path, called with

- the other merchant's object, another agent's object, an object outside a policy-session
  token's scope → the same 403/404 as an unknown id (a 403 never confirms an id exists),
  and nothing of the object in the answer;
- no token, a malformed token, a rotated, frozen, deleted agent's, a revoked session's or a
  revoked API key → 401 with the documented code, on the caller's OWN objects (so a hole
  would leak real data).

Never a 2xx. On both databases."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from solders.keypair import Keypair

from tests.support import Api, active_key, merchant_api
from zpay.jobs.delivery import dispatch_events
from zpay.services.context import AppContext

METHODS = ("get", "post", "put", "patch", "delete")
# The kind of object each path's ids name, by path prefix. A new route with an id must be
# added here (the test fails on an unknown one), so the matrix always covers every route.
KINDS = {"/v1/agents/": "agent", "/v1/sessions/": "session", "/v1/session-keys/": "key",
         "/v1/payments/": "payment", "/v1/x402/payments/": "payment",
         "/v1/webhook-endpoints/": "endpoint", "/v1/webhook-deliveries/": "delivery",
         "/v1/api-keys/": "api_key"}
PREFIX = {"agent": "agt", "session": "ses", "key": "skey", "payment": "pay", "endpoint": "we",
          "delivery": "wd", "api_key": "key", "top_up": "apr"}


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    kind: str
    body: dict[str, Any] | None
    query: dict[str, str]

    def url(self, ids: dict[str, str]) -> str:
        def fill(m: re.Match[str]) -> str:
            return ids["top_up"] if m.group(1) == "top_up_id" else ids[self.kind]
        return re.sub(r"\{(\w+)\}", fill, self.path)


def _operations(doc: dict[str, Any], own: dict[str, str]) -> list[Op]:
    comps = doc.get("components", {}).get("schemas", {})
    ops = []
    for path, item in doc["paths"].items():
        if "{" not in path:
            continue
        kind = next((k for prefix, k in KINDS.items() if path.startswith(prefix)), None)
        assert kind is not None, f"{path}: add its kind of id to KINDS"
        for method, op in item.items():
            if method not in METHODS:
                continue
            body = None
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                schema = comps.get(schema.get("$ref", "").rsplit("/", 1)[-1], schema)
                samples = {"session_id": own["session"], "amount": "1",
                           "payment_response": base64.b64encode(json.dumps(
                               {"success": True, "transaction": "tx"}).encode()).decode()}
                body = {name: samples.get(name, "x") for name in schema.get("required", [])}
            query = {p["name"]: "1" for p in op.get("parameters", [])
                     if p["in"] == "query" and p.get("required")}
            ops.append(Op(method.upper(), path, kind, body, query))
    return ops


async def _call(http: httpx.AsyncClient, op: Op, ids: dict[str, str],
                token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if op.body is not None:
        return await http.request(op.method, op.url(ids), json=op.body, headers=headers,
                                  params=op.query)
    return await http.request(op.method, op.url(ids), headers=headers, params=op.query)


def _unknown() -> dict[str, str]:
    return {kind: f"{p}_{uuid.uuid4().hex[:28]}" for kind, p in PREFIX.items()}


async def _world(api: Api, other: Api, ctx: AppContext) -> dict[str, Any]:
    """Merchant A (the caller) and merchant B (the other), with what each case needs."""
    to = str(Keypair().pubkey())
    a1 = await api.ok("POST", "/v1/agents", {"name": "a1"})
    a2 = await api.ok("POST", "/v1/agents", {"name": f"a2-{uuid.uuid4().hex}"})
    sa1 = await api.ok("POST", "/v1/sessions", {"agent_id": a1["id"]})
    sa2 = await api.ok("POST", "/v1/sessions", {"agent_id": a1["id"]})
    sa2_of_a2 = await api.ok("POST", "/v1/sessions", {"agent_id": a2["id"]})
    _, ka1, _ = await active_key(api, ctx, max_amount="10", session_id=sa1["id"], agent=a1)
    _, ka3, _ = await active_key(api, ctx, max_amount="10", agent=a1)  # not in sa1's scope
    _, ka2, _ = await active_key(api, ctx, max_amount="10", agent=a2)
    pays = {}
    for key in (ka1, ka2, ka3):
        resp = await api.pay(key["id"], "1", to)
        assert resp.status_code == 201, resp.text
        pays[key["id"]] = resp.json()["id"]
    top_up_a = await api.ok("POST", f"/v1/session-keys/{ka1['id']}/top-ups", {"amount": "1"})

    b1 = await other.ok("POST", "/v1/agents", {"name": f"b1-{uuid.uuid4().hex}"})
    endpoint_b = await other.ok("POST", "/v1/webhook-endpoints",
                                {"url": "https://example.com/b"})
    sb1 = await other.ok("POST", "/v1/sessions", {"agent_id": b1["id"]})
    _, kb1, user_b = await active_key(other, ctx, max_amount="10", agent=b1)
    resp = await other.pay(kb1["id"], "1", to)
    assert resp.status_code == 201, resp.text
    top_up_b = await other.ok("POST", f"/v1/session-keys/{kb1['id']}/top-ups", {"amount": "1"})
    await dispatch_events(ctx)
    deliveries = await other.ok("GET", f"/v1/webhook-endpoints/{endpoint_b['id']}/deliveries")
    assert deliveries["data"], "merchant B needs a webhook delivery"
    endpoint_a = await api.ok("POST", "/v1/webhook-endpoints", {"url": "https://example.com/a"})
    await api.ok("POST", "/v1/sessions", {"agent_id": a2["id"]})  # an event for A
    await dispatch_events(ctx)
    deliveries_a = await api.ok("GET", f"/v1/webhook-endpoints/{endpoint_a['id']}/deliveries")
    assert deliveries_a["data"], "merchant A needs a webhook delivery"
    api_key_b = (await other.ok("GET", "/v1/api-keys"))["data"][0]["id"]
    api_key_a = (await api.ok("GET", "/v1/api-keys"))["data"][0]["id"]

    # Dead credentials.
    rotated = await api.ok("POST", "/v1/agents", {"name": "rotated"})
    await api.ok("POST", f"/v1/agents/{rotated['id']}/rotate-token", {})
    frozen = await api.ok("POST", "/v1/agents", {"name": "frozen"})
    await api.ok("POST", f"/v1/agents/{frozen['id']}/freeze")
    deleted = await api.ok("POST", "/v1/agents", {"name": "deleted"})
    await api.ok("DELETE", f"/v1/agents/{deleted['id']}")
    revoked_session = await api.ok("POST", "/v1/sessions", {"agent_id": a1["id"]})
    await api.ok("POST", f"/v1/sessions/{revoked_session['id']}/revoke")
    spare = await api.ok("POST", "/v1/api-keys", {})
    await api.ok("POST", f"/v1/api-keys/{spare['id']}/revoke")

    own = {"agent": a1["id"], "session": sa1["id"], "key": ka1["id"],
           "payment": pays[ka1["id"]], "endpoint": endpoint_a["id"],
           "delivery": deliveries_a["data"][0]["id"],
           "api_key": api_key_a, "top_up": top_up_a["id"]}
    other_merchant = {"agent": b1["id"], "session": sb1["id"], "key": kb1["id"],
                      "payment": resp.json()["id"], "endpoint": endpoint_b["id"],
                      "delivery": deliveries["data"][0]["id"], "api_key": api_key_b,
                      "top_up": top_up_b["id"]}
    other_agent = {"agent": a2["id"], "session": sa2_of_a2["id"], "key": ka2["id"],
                   "payment": pays[ka2["id"]], "top_up": "apr_unknown"}
    out_of_scope = {"session": sa2["id"], "key": ka3["id"], "payment": pays[ka3["id"]],
                    "top_up": "apr_unknown"}
    # What must never appear in an answer about another's object.
    markers = [kb1["session_key_address"], user_b.address, kb1["user_wallet"], "example.com/b",
               ka2["session_key_address"], ka3["session_key_address"], b1["name"], a2["name"]]
    return {"own": own, "other_merchant": other_merchant, "other_agent": other_agent,
            "out_of_scope": out_of_scope, "markers": markers,
            "tokens": {"merchant": api.token, "agent": a1["token"],
                       "session": sa1["access_token"]},
            "dead": {"rotated agent token": (rotated["token"], "invalid_credentials"),
                     "frozen agent token": (frozen["token"], "agent_frozen"),
                     "deleted agent token": (deleted["token"], "invalid_credentials"),
                     "revoked session token": (revoked_session["access_token"],
                                               "session_not_active"),
                     "revoked API key": (spare["secret"], "invalid_credentials"),
                     "malformed token": ("sk_test_not-a-token", "invalid_credentials"),
                     "no token": (None, "missing_credentials")}}


async def test_tenancy_matrix_over_every_operation_with_an_id(ctx: AppContext,
                                                              served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http, "a")
        other = await merchant_api(ctx, http, "b")
        world = await _world(api, other, ctx)
        doc = (await http.get("/schema/openapi.json")).json()
        ops = _operations(doc, world["own"])
        assert len(ops) >= 25, [f"{o.method} {o.path}" for o in ops]
        checked = 0
        for op in ops:
            # Dead or absent credentials, on the caller's own objects: 401, nothing else.
            for what, (token, code) in world["dead"].items():
                resp = await _call(http, op, world["own"], token)
                assert (resp.status_code, resp.json().get("code")) == (401, code), (
                    op, what, resp.text[:300])
                checked += 1
            for who, token in world["tokens"].items():
                unknown = await _call(http, op, _unknown(), token)
                expected = (unknown.status_code, unknown.json().get("code"))
                assert expected[0] in (403, 404), (op, who, unknown.text[:300])
                cases = [("the other merchant's", world["other_merchant"])]
                if who != "merchant" and op.kind in world["other_agent"]:
                    cases.append(("another agent's", world["other_agent"]))
                if who == "session" and op.kind in world["out_of_scope"]:
                    cases.append(("outside the session's scope", world["out_of_scope"]))
                for what, ids in cases:
                    if op.kind not in ids:
                        continue
                    resp = await _call(http, op, {**_unknown(), **ids}, token)
                    where = (op.method, op.path, who, what)
                    assert (resp.status_code, resp.json().get("code")) == expected, (
                        where, resp.text[:300], expected)
                    assert resp.headers["content-type"].startswith(
                        "application/problem+json"), where
                    for marker in world["markers"]:
                        assert marker not in resp.text, (where, marker)
                    checked += 1
        assert checked > 300
        # And the matrix did not move anything: A's and B's objects are as they were.
        for api_, ids in ((api, world["own"]), (other, world["other_merchant"])):
            key = await api_.ok("GET", f"/v1/session-keys/{ids['key']}")
            assert key["status"] == "active"
            agent = await api_.ok("GET", f"/v1/agents/{ids['agent']}")
            assert agent["status"] == "active"
