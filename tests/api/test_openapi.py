"""The OpenAPI document: security per operation, every error status as problem+json with its
codes, typed responses that match what the API really answers, and docs without any CDN."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import jsonschema
from referencing import Registry, Resource

from tests.support import Api, active_key, merchant_api
from zpay.api.openapi import OPS
from zpay.client.wallet import SolanaWallet
from zpay.services.context import AppContext

METHODS = ("get", "post", "put", "patch", "delete")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, item in doc["paths"].items()
            for m, op in item.items() if m in METHODS]


class Contract:
    """Validates real answers against the document's schema for (method, path, status)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(
            "urn:zpay", Resource.from_contents({**doc, "$schema":
                                                "https://json-schema.org/draft/2020-12/schema"}))
        self.checked: set[tuple[str, str, str]] = set()

    def check(self, method: str, path: str, resp: httpx.Response) -> dict[str, Any]:
        op = self.doc["paths"][path][method.lower()]
        status = str(resp.status_code)
        assert status in op["responses"], (method, path, status, resp.text)
        content = op["responses"][status].get("content", {})
        media = resp.headers["content-type"].split(";")[0]
        assert media in content, (method, path, status, media)
        schema = content[media]["schema"]
        if "$ref" in schema:
            schema = {**schema, "$ref": "urn:zpay" + schema["$ref"]}
        jsonschema.validate(resp.json(), schema, registry=self.registry,
                            cls=jsonschema.Draft202012Validator)
        self.checked.add((method, path, status))
        return dict(resp.json())


async def test_the_document_says_who_may_call_and_every_error(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        doc = (await http.get("/schema/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"merchantKey", "agentToken", "sessionToken"}
    assert all(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    ops = operations(doc)
    assert len(ops) > 40
    for method, path, op in ops:
        where = f"{method} {path}"
        assert (method, path) in OPS, f"{where}: describe it in zpay.api.openapi.OPS"
        assert op["summary"] == OPS[(method, path)].summary, where
        responses = op["responses"]
        for status, response in responses.items():
            if int(status) >= 400 and not (path == "/ready" and status == "503"):
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema["$ref"] == "#/components/schemas/Problem", where
                assert schema["x-codes"], where
        if not path.startswith("/v1/"):
            assert op["security"] == [], where
            continue
        assert op["security"], where
        assert {"401", "429", "503"} <= set(responses), where
        assert "rate_limited" in responses["429"]["content"][
            "application/problem+json"]["schema"]["x-codes"]
        if op["security"] == [{"merchantKey": []}]:
            assert "403" in responses, where
        if "{" in path:
            assert "404" in responses, where
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= set(responses), where
        for param in op.get("parameters", []):
            if param["name"] == "limit":
                assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, 100)
    pay = doc["paths"]["/v1/payments"]["post"]
    idem = next(p for p in pay["parameters"] if p["name"] == "Idempotency-Key")
    assert idem["required"] is True and idem["in"] == "header"
    assert {"201", "202", "402", "409"} <= set(pay["responses"])
    assert {s for d in pay["security"] for s in d} == {"merchantKey", "agentToken",
                                                      "sessionToken"}
    assert doc["paths"]["/v1/agents"]["post"]["security"] == [{"merchantKey": []}]
    # request bodies carry their string maxima (zpay.services.fields)
    agent_create = doc["components"]["schemas"]["AgentCreate"]["properties"]["name"]
    assert agent_create.get("maxLength") == 200 or any(
        s.get("maxLength") == 200 for s in agent_create.get("oneOf", []))


async def test_the_docs_page_needs_no_cdn(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        for page in ("/schema", "/schema/redoc"):
            resp = await http.get(page)
            assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
            urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", resp.text)
            assert urls, resp.text
            assert all(not re.match(r"(https?:)?//", u) for u in urls), urls
            assert "fonts.googleapis" not in resp.text and "cdn." not in resp.text
            for url in urls:
                asset = await http.get(url)
                assert asset.status_code == 200, url
                assert len(asset.content) > 100_000  # the vendored Redoc bundle


async def test_responses_match_the_document(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        contract = Contract((await http.get("/schema/openapi.json")).json())
        api = await merchant_api(ctx, http)

        async def call(api: Api, method: str, template: str, body: Any = None,
                       **values: str) -> dict[str, Any]:
            path = template.format(**values)
            if method == "GET":
                resp = await api.get(path)
            elif method == "DELETE":
                resp = await api.delete(path)
            else:
                resp = await api.post(path, body, **({"Idempotency-Key": str(uuid.uuid4())}
                                                     if template == "/v1/payments" else {}))
            return contract.check(method, template, resp)

        agent = await call(api, "POST", "/v1/agents", {"name": "bot"})
        await call(api, "GET", "/v1/agents")
        await call(api, "GET", "/v1/agents/{agent_id}", agent_id=agent["id"])
        await call(api, "GET", "/v1/agents/{agent_id}", agent_id="agt_nope")
        await call(api.as_("nope"), "GET", "/v1/agents")
        session = await call(api, "POST", "/v1/sessions",
                             {"agent_id": agent["id"], "max_per_transaction": "5"})
        await call(api, "GET", "/v1/sessions/{session_id}", session_id=session["id"])
        await call(api, "GET", "/v1/sessions")
        _, key, _ = await active_key(api, ctx, max_amount="10", agent=agent,
                                     session_id=session["id"])
        pending = await call(api, "POST", "/v1/session-keys", {
            "agent_id": agent["id"], "user_wallet": SolanaWallet.generate().address,
            "max_amount": "1", "expires_in_seconds": 600})
        assert pending["status"] == "pending_approval"
        await call(api, "GET", "/v1/session-keys/{key_id}", key_id=key["id"])
        await call(api, "GET", "/v1/session-keys")
        agent_api = api.as_(agent["token"])
        recipient = SolanaWallet.generate().address
        resp = await agent_api.get(f"/v1/session-keys/{key['id']}/can-afford", amount="1")
        contract.check("GET", "/v1/session-keys/{key_id}/can-afford", resp)
        paid = await call(agent_api, "POST", "/v1/payments",
                          {"session_key_id": key["id"], "amount": "1", "recipient": recipient})
        await call(agent_api, "POST", "/v1/payments",
                   {"session_key_id": key["id"], "amount": "6", "recipient": recipient})
        await call(agent_api, "GET", "/v1/payments/{payment_id}", payment_id=paid["id"])
        await call(agent_api, "GET", "/v1/payments")
        await call(agent_api, "GET", "/v1/session-keys/{key_id}/attempts", key_id=key["id"])
        await call(agent_api, "POST", "/v1/agents", {"name": "x"})  # 403
        await call(api, "DELETE", "/v1/session-keys/{key_id}/link", key_id=key["id"])
        await call(api, "POST", "/v1/session-keys/{key_id}/revoke", key_id=pending["id"])
        await call(api, "POST", "/v1/sessions/{session_id}/revoke", session_id=session["id"])
        created = await call(api, "POST", "/v1/api-keys", {"name": "ci"})
        await call(api, "GET", "/v1/api-keys")
        await call(api, "POST", "/v1/api-keys/{key_id}/roll", key_id=created["id"])
        await call(api, "POST", "/v1/agents/{agent_id}/rotate-token", agent_id=agent["id"])
        await call(api, "DELETE", "/v1/agents/{agent_id}", agent_id=agent["id"])
    statuses = {s for _, _, s in contract.checked}
    assert {"200", "201", "401", "402", "403", "404"} <= statuses, contract.checked
