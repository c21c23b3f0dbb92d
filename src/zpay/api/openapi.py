"""The OpenAPI document at /schema/openapi.json and its docs page, served without any CDN.

Litestar generates the operations from the handlers; `enrich` then completes the document
from the tables below, so a client generator, a security reviewer and an operator can rely
on it:

- the three bearer security schemes (merchant secret key, agent token, policy-session
  token) and, per operation, which of them it accepts (none for /health and /ready);
- every error status an operation can answer, as `application/problem+json` (the `Problem`
  schema) with the codes it can carry, and 429's `Retry-After`/`RateLimit-*` headers;
- the response body of the most used operations from the Structs in `zpay.api.responses`;
- `Idempotency-Key` required on `POST /v1/payments`, `limit` bounded to 1..100, a summary
  and a description for every operation.

The docs page is Redoc, vendored from the npm registry into the package
(`zpay/web/static/vendor/redoc/`, see its SOURCE file): no font, script or icon is
fetched from elsewhere, since zpay is self-hosted and may run offline.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin

from zpay.api import responses as r
from zpay.domain.policy import Reason

REDOC_JS = "/static/vendor/redoc/redoc.standalone.js"
PROBLEM = "application/problem+json"
JSON = "application/json"

MERCHANT = ("merchantKey",)
ANYONE = ("merchantKey", "agentToken", "sessionToken")

AUTH_CODES = ("missing_credentials", "invalid_credentials", "token_expired", "agent_frozen",
              "session_not_active")
BODY_CODES: dict[int, tuple[str, ...]] = {
    400: ("malformed_json",), 413: ("request_body_too_large",), 415: ("unsupported_media_type",)}
VALIDATION_CODES = ("invalid_request", "invalid_characters")
# every refusal reason of the authorization (zpay.domain.policy.Reason), but "approved"
REFUSAL_CODES = tuple(sorted(v for k, v in vars(Reason).items()
                             if k.isupper() and v != Reason.APPROVED))


@dataclass(frozen=True)
class Op:
    summary: str
    description: str = ""
    auth: tuple[str, ...] = MERCHANT
    body: type[msgspec.Struct] | None = None  # the success response's schema
    not_found: tuple[str, ...] = ()
    errors: dict[int, tuple[str, ...]] = field(default_factory=dict)


_AGENT_404 = ("agent_not_found",)
_KEY_404 = ("session_key_not_found",)
_SESSION_404 = ("session_not_found",)
_PAGE = "Newest first; `limit` 1..100 (default 20), then `starting_after` = `next_cursor`."
_APPROVAL_SUBMIT_ERRORS: dict[int, tuple[str, ...]] = {  # a funding or top-up approval
    202: ("approval_pending",),
    409: ("approval_in_flight", "approval_already_used", "session_key_not_live"),
    503: ("chain_unavailable",),
    422: ("approval_mismatch", "approval_signature_invalid", "approval_expired",
          "approval_rejected")}

OPS: dict[tuple[str, str], Op] = {
    ("GET", "/health"): Op("Liveness", "200 while the process serves requests.", auth=()),
    ("GET", "/ready"): Op("Readiness", "200 when the database and every enabled chain answer "
                          "within 3 s; 503 with the failing checks otherwise.", auth=()),
    # agents
    ("POST", "/v1/agents"): Op(
        "Create an agent", "An agent and its bearer token (`token`, shown once). With "
        "`expires_in_seconds` (60 s to a year) the token stops working after that long.",
        body=r.Agent, errors={422: ("invalid_name", "invalid_expiry")}),
    ("GET", "/v1/agents"): Op("List agents", _PAGE, body=r.AgentList,
                              errors={422: ("invalid_limit",)}),
    ("GET", "/v1/agents/{agent_id}"): Op(
        "Get an agent", "An agent token reads its own agent only.", auth=ANYONE, body=r.Agent,
        not_found=_AGENT_404),
    ("POST", "/v1/agents/{agent_id}/rotate-token"): Op(
        "Rotate an agent's token", "A new token (`token`, shown once); the old one is refused "
        "from the next call on. Optional `expires_in_seconds` for the new token.",
        body=r.Agent, not_found=_AGENT_404, errors={422: ("invalid_expiry",)}),
    ("POST", "/v1/agents/{agent_id}/freeze"): Op(
        "Freeze an agent", "Its tokens are refused (401 `agent_frozen`) until unfrozen.",
        body=r.Agent, not_found=_AGENT_404),
    ("POST", "/v1/agents/{agent_id}/unfreeze"): Op("Unfreeze an agent", body=r.Agent,
                                                   not_found=_AGENT_404),
    ("DELETE", "/v1/agents/{agent_id}"): Op(
        "Delete an agent", "Its token dies at once; its live session keys are revoked and "
        "refunded, its policy sessions revoked. Keys and payments stay for the books.",
        body=r.Agent, not_found=_AGENT_404, errors={409: ("agent_deleted",)}),
    # merchant API keys
    ("POST", "/v1/api-keys"): Op("Create a secret API key", "`secret` is shown once.",
                                 body=r.ApiKey, errors={422: ("invalid_name",)}),
    ("GET", "/v1/api-keys"): Op("List API keys", "Hints only (prefix and last four "
                                "characters), never a secret. " + _PAGE, body=r.ApiKeyList),
    ("GET", "/v1/api-keys/{key_id}"): Op("Get an API key", body=r.ApiKey,
                                         not_found=("api_key_not_found",)),
    ("POST", "/v1/api-keys/{key_id}/revoke"): Op(
        "Revoke an API key", "Refused from the next call on (401). The merchant's last usable "
        "key cannot be revoked.", body=r.ApiKey, not_found=("api_key_not_found",),
        errors={409: ("last_api_key",)}),
    ("POST", "/v1/api-keys/{key_id}/roll"): Op(
        "Roll an API key", "A new key (`secret`, shown once) with the same name; the old one "
        "keeps working for `overlap_seconds` (default a day, at most a week; 0 revokes it "
        "now), then answers 401 `token_expired`.", body=r.RolledApiKey,
        not_found=("api_key_not_found",), errors={409: ("api_key_not_active",)}),
    # policy sessions
    ("POST", "/v1/sessions"): Op(
        "Create a policy session", "Limits bound to an agent (per transaction, day, week, "
        "month, total; allowed recipients, chains, methods; active hours; expiry). Its `as_` "
        "token (`access_token`, shown once) acts as the agent within this session only.",
        body=r.PolicySession, not_found=_AGENT_404,
        errors={422: ("invalid_amount", "invalid_recipient", "invalid_active_hours",
                      "invalid_timezone", "unknown_chain", "unknown_token")}),
    ("GET", "/v1/sessions"): Op("List policy sessions", _PAGE + " A session token sees its "
                                "own session only.", auth=ANYONE, body=r.PolicySessionList),
    ("GET", "/v1/sessions/{session_id}"): Op(
        "Get a policy session", "Its limits, what each window has used and what frees up "
        "when.", auth=ANYONE, body=r.PolicySession, not_found=_SESSION_404),
    ("POST", "/v1/sessions/{session_id}/revoke"): Op(
        "Revoke a policy session", "Its token is refused from the next call on; linked keys "
        "can no longer pay through it.", body=r.PolicySession, not_found=_SESSION_404,
        errors={409: ("session_revoked",)}),
    # session keys
    ("POST", "/v1/session-keys"): Op(
        "Create a session key", "A dedicated wallet for an agent, pending the user's approval: "
        "`approval` holds what the user's wallet signs.", body=r.SessionKey,
        not_found=_AGENT_404 + _SESSION_404,
        errors={422: ("invalid_amount", "invalid_address", "unknown_chain", "unknown_token",
                      "chain_not_enabled", "flow_not_supported")}),
    ("GET", "/v1/session-keys"): Op("List session keys", _PAGE, auth=ANYONE,
                                    body=r.SessionKeyList, errors={422: ("invalid_status",)}),
    ("GET", "/v1/session-keys/{key_id}"): Op(
        "Get a session key's status", "Status and balances (funded, spent, held, refunded, "
        "remaining).", auth=ANYONE, body=r.SessionKey, not_found=_KEY_404),
    ("POST", "/v1/session-keys/{key_id}/approval"): Op(
        "Submit the signed funding approval", "Checked against what zpay issued, co-signed, "
        "sent and confirmed; answers once the key is funded (202 `approval_pending` while "
        "the chain has not answered yet: submit the same approval again).", body=r.SessionKey,
        not_found=_KEY_404,
        errors=_APPROVAL_SUBMIT_ERRORS),
    ("POST", "/v1/session-keys/{key_id}/approval/renew"): Op(
        "Renew the funding approval", "A fresh approval (e.g. after `approval_expired`); the "
        "old one is void.", not_found=_KEY_404,
        errors={409: ("approval_not_renewable", "session_key_not_live")}),
    ("POST", "/v1/session-keys/{key_id}/top-ups"): Op(
        "Ask for a top-up", "An approval for more funds, for the user to sign.",
        not_found=_KEY_404, errors={409: ("session_key_not_live",),
                                    422: ("invalid_amount",)}),
    ("POST", "/v1/session-keys/{key_id}/top-ups/{top_up_id}/approval"): Op(
        "Submit a signed top-up", body=r.SessionKey, not_found=(*_KEY_404, "approval_not_found"),
        errors=_APPROVAL_SUBMIT_ERRORS),
    ("POST", "/v1/session-keys/{key_id}/top-ups/{top_up_id}/renew"): Op(
        "Renew a top-up approval", not_found=(*_KEY_404, "approval_not_found"),
        errors={409: ("approval_not_renewable", "session_key_not_live")}),
    ("POST", "/v1/session-keys/{key_id}/revoke"): Op(
        "Revoke a session key", "Irreversible and immediate: a payment not yet sent fails; "
        "what is left goes back to the user.", body=r.SessionKey, not_found=_KEY_404),
    ("POST", "/v1/session-keys/{key_id}/link"): Op(
        "Link a policy session", "Payments then need BOTH the key's balance and the "
        "session's limits.", body=r.SessionKey, not_found=_KEY_404 + _SESSION_404,
        errors={409: ("session_not_active",),
                422: ("session_agent_mismatch", "token_mismatch")}),
    ("DELETE", "/v1/session-keys/{key_id}/link"): Op(
        "Unlink the policy session", "The balance stays; the policy layer goes.",
        body=r.SessionKey, not_found=_KEY_404, errors={409: ("not_linked",)}),
    ("GET", "/v1/session-keys/{key_id}/can-afford"): Op(
        "Check a payment without paying", "Authorization without a hold: `allowed`, the "
        "reason, and what is left per window.", auth=ANYONE, body=r.Affordability,
        not_found=_KEY_404, errors={422: ("invalid_amount", "invalid_address")}),
    ("GET", "/v1/session-keys/{key_id}/attempts"): Op(
        "The key's audit log", "Every authorization, allowed or refused, with its reason. "
        + _PAGE, auth=ANYONE, body=r.PaymentAttemptList, not_found=_KEY_404),
    # payments
    ("POST", "/v1/payments"): Op(
        "Pay from a session key", "Authorize (balance and linked policy, one transaction), "
        "sign, send and confirm. 201 `succeeded`; 202 `submitted` (settled later from the "
        "chain); 402 when refused (`code` = the reason; nothing held) or when the payment "
        "ended `failed` (`code` = its `failure_code`, the payment in `payment`). The same "
        "`Idempotency-Key` with the same body answers the same payment "
        "(`Idempotent-Replayed: true`).", auth=ANYONE, body=r.Payment, not_found=_KEY_404,
        errors={402: (*REFUSAL_CODES, "transfer_failed", "payment_failed"),
                409: ("idempotency_request_in_flight",),
                422: ("idempotency_key_missing", "idempotency_key_invalid",
                      "idempotency_key_reused", "invalid_amount", "invalid_address",
                      "invalid_recipient"),
                429: ("refusals_rate_limited",), 502: ("chain_error",),
                503: ("chain_unavailable",)}),
    ("GET", "/v1/payments"): Op("List payments", _PAGE, auth=ANYONE, body=r.PaymentList),
    ("GET", "/v1/payments/{payment_id}"): Op("Get a payment", auth=ANYONE, body=r.Payment,
                                             not_found=("payment_not_found",)),
    # x402 (zpay.api.x402)
    ("POST", "/v1/x402/payments"): Op(
        "Pay an x402 resource from a session key", "Both layers and the hold, then the signed "
        "payment header for the resource server (`header_name`, `header_value`). The same "
        "`Idempotency-Key` answers the same payment (200, `Idempotent-Replayed: true`).",
        auth=ANYONE, not_found=_KEY_404,
        errors={402: REFUSAL_CODES, 409: ("idempotency_request_in_flight",),
                422: ("idempotency_key_missing", "idempotency_key_invalid",
                      "idempotency_key_reused", "invalid_amount", "invalid_address")}),
    ("GET", "/v1/x402/payments/{payment_id}"): Op("Get an x402 payment", auth=ANYONE,
                                                  not_found=("payment_not_found",)),
    ("POST", "/v1/x402/payments/{payment_id}/settlement"): Op(
        "Report an x402 settlement", "The PAYMENT-RESPONSE the agent got: zpay checks the "
        "chain; 200 once final.", auth=ANYONE, not_found=("payment_not_found",)),
    # the rest
    ("POST", "/v1/faucet"): Op("Test tokens (local networks only)",
                               errors={422: ("invalid_amount", "invalid_address",
                                             "faucet_not_local")}),
    ("GET", "/v1/events"): Op("List events", "The event log (the webhooks' source). " + _PAGE,
                              errors={422: ("unknown_event_type",)}),
    ("GET", "/v1/audit"): Op("Books against the chain", "The audit's findings per session "
                             "wallet. " + _PAGE),
    ("GET", "/v1/webhook-endpoints"): Op("List webhook endpoints", _PAGE),
    ("POST", "/v1/webhook-endpoints"): Op(
        "Add a webhook endpoint", "Its signing `secret` is shown once.",
        errors={409: ("too_many_webhook_endpoints",),
                422: ("invalid_webhook_url", "webhook_url_not_allowed")}),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): Op(
        "Get a webhook endpoint", not_found=("webhook_endpoint_not_found",)),
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): Op(
        "Update a webhook endpoint", not_found=("webhook_endpoint_not_found",),
        errors={422: ("invalid_webhook_url", "webhook_url_not_allowed")}),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): Op(
        "Delete a webhook endpoint", not_found=("webhook_endpoint_not_found",)),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): Op(
        "An endpoint's delivery log", _PAGE, not_found=("webhook_endpoint_not_found",),
        errors={422: ("invalid_status",)}),
    ("GET", "/v1/webhook-deliveries/{delivery_id}"): Op(
        "Get a webhook delivery", not_found=("webhook_delivery_not_found",)),
    ("POST", "/v1/webhook-deliveries/{delivery_id}/redeliver"): Op(
        "Redeliver now", not_found=("webhook_delivery_not_found",),
        errors={409: ("webhook_endpoint_disabled",)}),
}

SECURITY_SCHEMES = {
    "merchantKey": {"type": "http", "scheme": "bearer", "bearerFormat": "sk_test_… / sk_live_…",
                    "description": "A merchant secret API key: every operation of the "
                                   "merchant's own account."},
    "agentToken": {"type": "http", "scheme": "bearer", "bearerFormat": "agent_test_…",
                   "description": "An agent token: pay, pre-check and read the agent's own "
                                  "session keys, sessions and payments; never manage limits."},
    "sessionToken": {"type": "http", "scheme": "bearer", "bearerFormat": "as_test_…",
                     "description": "A policy-session token: acts as the agent within one "
                                    "policy session, sees only what it can act on."},
}
_HEADERS = {
    "X-Request-Id": {"description": "The request's id (the client's when sane, else a new "
                                    "one); also `request_id` in problem bodies.",
                     "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"}},
    "RateLimit-Limit": {"description": "Requests allowed per window.",
                        "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in this window.",
                            "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the window resets.",
                        "schema": {"type": "integer"}},
}
_TITLES = {400: "Malformed request", 401: "Not authenticated", 402: "Payment refused or failed",
           403: "Not allowed with this token", 404: "Not found (or not yours)",
           409: "Conflict", 413: "Body too large", 415: "Body is not JSON",
           422: "Invalid input", 429: "Rate limited", 502: "The chain refused",
           503: "Unavailable; retry later"}


def _components(schemas: dict[str, Any]) -> None:
    structs: list[Any] = [r.Problem, *{op.body for op in OPS.values() if op.body is not None}]
    _, defs = msgspec.json.schema_components(structs,
                                             ref_template="#/components/schemas/{name}")
    for name, schema in defs.items():
        schemas.setdefault(name, schema)


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{struct.__name__}"}


def _problem(status: int, codes: Iterable[str]) -> dict[str, Any]:
    listed = sorted(set(codes))
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 429:
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
            headers[name] = {"$ref": f"#/components/headers/{name}"}
    return {"description": f"{_TITLES.get(status, 'Error')}. Codes: "
                           + ", ".join(f"`{c}`" for c in listed),
            "headers": headers,
            "content": {PROBLEM: {"schema": {**_ref(r.Problem), "x-codes": listed}}}}


@dataclass(frozen=True)
class _Handler:
    auth: bool
    body: bool


def _handlers(app: Litestar) -> dict[tuple[str, str], _Handler]:
    out: dict[tuple[str, str], _Handler] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            params = handler.parsed_fn_signature.parameters
            for method in getattr(handler, "http_methods", ()):
                out[(method, route.path_format or "/")] = _Handler(
                    "principal" in params, "data" in params)
    return out


def enrich(schema: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """The document Litestar generated, completed (see the module docstring)."""
    doc = copy.deepcopy(schema)
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    components.setdefault("headers", {}).update(_HEADERS)
    _components(components.setdefault("schemas", {}))
    handlers = _handlers(app)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            key = (method.upper(), path)
            handler = handlers.get(key, _Handler(False, False))
            _operation(operation, path, OPS.get(key), handler)
    return doc


def _operation(operation: dict[str, Any], path: str, op: Op | None, handler: _Handler) -> None:
    auth: tuple[str, ...] = (op.auth if op is not None else MERCHANT) if handler.auth else ()
    if op is not None:
        operation["summary"] = op.summary
        if op.description:
            operation["description"] = op.description
    operation["security"] = [{scheme: []} for scheme in auth]
    params = operation.get("parameters", [])
    for param in params:
        if param.get("name") == "limit" and param.get("in") == "query":
            param["schema"] = {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
        if param.get("name") == "Idempotency-Key" and param.get("in") == "header":
            param["required"] = True
            param["schema"] = {"type": "string", "minLength": 1, "maxLength": 255}
            param["description"] = ("Required. The same key with the same body answers the "
                                    "same payment; with another body, 422.")
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("400", None)  # Litestar's generic ValidationException answer
    errors: dict[int, set[str]] = {}

    def add(status: int, codes: Iterable[str]) -> None:
        errors.setdefault(status, set()).update(codes)

    if path.startswith("/v1/"):
        add(429, ("rate_limited",))
        add(503, ("database_unavailable",))
    if auth:
        add(401, AUTH_CODES)
        if auth == MERCHANT:
            add(403, ("merchant_key_required",))
    if op is not None and op.not_found:  # ids in the path or the body
        add(404, op.not_found)
    elif "{" in path:
        add(404, ("not_found",))
    if params or handler.body:
        add(422, VALIDATION_CODES)
    if handler.body:
        for code, codes in BODY_CODES.items():
            add(code, codes)
    if op is not None:
        for code, codes in op.errors.items():
            add(code, codes)
    if path == "/ready":
        responses["503"] = {"description": "The database or a chain does not answer; the "
                            "body names which.", "content": {JSON: {"schema": {"type": "object"}}}}
    for code, listed in sorted(errors.items()):
        if code < 300 and str(code) in responses:
            continue
        responses[str(code)] = _problem(code, listed)
    if op is not None and op.body is not None:
        for status, response in responses.items():
            if status.startswith("2"):
                response["content"] = {JSON: {"schema": _ref(op.body)}}
        if path == "/v1/payments" and "201" in responses:
            responses["202"] = {"description": "Submitted, not final yet: settled from the "
                                "chain later (poll GET /v1/payments/{id}).",
                                "content": {JSON: {"schema": _ref(r.Payment)}}}
            responses["201"]["description"] = "Succeeded: the transfer is confirmed on chain."
    for status, response in responses.items():
        if status.startswith("2"):
            response.setdefault("headers", {})["X-Request-Id"] = {
                "$ref": "#/components/headers/X-Request-Id"}


class _Enriched:
    """Each app's enriched document, built once on first request."""

    def __init__(self) -> None:
        self._doc: dict[str, Any] | None = None

    def get(self, request: Request[Any, Any, Any], schema: dict[str, Any]) -> dict[str, Any]:
        if self._doc is None:
            self._doc = enrich(schema, request.app)
        return self._doc


class _Json(JsonRenderPlugin):
    def __init__(self, enriched: _Enriched) -> None:
        super().__init__()
        self.enriched = enriched

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.enriched.get(request, openapi_schema))


class _Redoc(RedocRenderPlugin):
    def __init__(self, enriched: _Enriched) -> None:
        super().__init__(js_url=REDOC_JS, google_fonts=False, favicon="", path=["/redoc"])
        self.enriched = enriched

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.enriched.get(request, openapi_schema))


def openapi_config(version: str) -> OpenAPIConfig:
    enriched = _Enriched()
    return OpenAPIConfig(
        title="zpay", version=version, path="/schema",
        description="Pre-funded session wallets for autonomous agents. Errors are "
                    "`application/problem+json` with a stable `code` (docs/errors.md). Every "
                    "response carries `X-Request-Id`.",
        render_plugins=[_Redoc(enriched), _Json(enriched)],
    )
