"""The one table mapping domain and chain errors to problem+json responses."""

from __future__ import annotations

import logging
import socket
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from sqlalchemy import exc as sa_exc

from zpay.api.request_id import current_request_id
from zpay.chains.protocol import ChainError, ChainUnavailable
from zpay.chains.redaction import redact
from zpay.custody import CustodyError
from zpay.domain.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PaymentRefused,
    Unauthorized,
    ZpayError,
)
from zpay.services.chain_errors import message_for

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

_BY_CLASS: tuple[tuple[type[ZpayError], int], ...] = (
    (InvalidRequest, 422), (NotFound, 404), (Unauthorized, 401), (Forbidden, 403),
    (Conflict, 409), (PaymentRefused, 402),
)
_BY_CODE = {
    "approval_mismatch": 422, "approval_signature_invalid": 422, "approval_expired": 422,
    "approval_rejected": 422, "idempotency_key_reused": 422, "invalid_address": 422,
    "unknown_chain": 422, "unknown_token": 422, "flow_not_supported": 422, "invalid_amount": 422,
    "transfer_failed": 502, "chain_unavailable": 503, "chain_error": 502,
    "approval_pending": 202, "approval_in_flight": 409, "approval_link_expired": 410,
    "x402_domain_mismatch": 422, "x402_fee_payer_invalid": 422, "x402_memo_invalid": 422,
    "service_unavailable": 503,
    "malformed_json": 400, "unsupported_media_type": 415,
}
# Codes of errors raised by Litestar itself, by status.
_HTTP_CODES = {400: "bad_request", 405: "method_not_allowed", 413: "request_body_too_large",
               415: "unsupported_media_type"}
DB_RETRY_AFTER_S = 5
_TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Refused", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
           413: "Content Too Large", 415: "Unsupported Media Type", 429: "Too Many Requests",
           422: "Unprocessable Content", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


def problem(status: int, code: str, detail: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"type": f"https://zpay.dev/errors/{code}", "title": _TITLES.get(status, "Error"),
            "status": status, "code": code, "detail": detail, **extra}
    request_id = current_request_id()
    if request_id is not None:  # the id the response echoes in X-Request-Id
        body["request_id"] = request_id
    return status, body


def problem_for(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, ZpayError):
        status = _BY_CODE.get(exc.code)
        if status is None:
            status = next((st for cls, st in _BY_CLASS if isinstance(exc, cls)), 422)
        return problem(status, exc.code, exc.message, **exc.extra)
    if isinstance(exc, ChainError):
        log.warning("chain error reached the API: %s (%s)", redact(str(exc)), exc.code)
        status = _BY_CODE.get(exc.code) or (503 if isinstance(exc, ChainUnavailable) else 502)
        return problem(status, exc.code, message_for(exc.code))
    if isinstance(exc, ValidationException):
        return problem(422, "invalid_request", "the request body or parameters are invalid",
                       errors=_safe_extra(exc.extra))
    if isinstance(exc, NotFoundException):
        return problem(404, "route_not_found", "no such route")
    if isinstance(exc, HTTPException):
        return problem(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"),
                       str(exc.detail))
    if is_database_outage(exc):
        log.error("database unavailable: %s", type(exc).__name__)
        return problem(503, "database_unavailable",
                       "the database is unavailable; retry later", retry_after=DB_RETRY_AFTER_S)
    if isinstance(exc, CustodyError):
        log.error("custody failure: %s", type(exc).__name__)
        return problem(500, "custody_error", "a wallet secret could not be opened")
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal_error", "an internal error occurred")


def failed_payment_problem(payment: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A payment that ended `failed` (nothing moved, the hold was released): 402 with its
    `failure_code` as `code` and the payment object inside."""
    code = str(payment.get("failure_code") or "payment_failed")
    return problem(402, code, f"the payment failed ({code}); nothing was transferred",
                   payment=payment)


def _safe_extra(extra: Any) -> Any:
    if isinstance(extra, list):
        return [{k: v for k, v in item.items() if k in ("key", "message", "source")}
                if isinstance(item, dict) else str(item) for item in extra]
    return None


def problem_response(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, media_type=PROBLEM)


def is_database_outage(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (not a query's fault)."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError
                  | sa_exc.DisconnectionError | ConnectionError | socket.gaierror):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError
                      | asyncpg.exceptions.CannotConnectNowError
                      | asyncpg.exceptions.TooManyConnectionsError)


def handle_exception(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status, body = problem_for(exc)
    response = problem_response(status, body)
    if body.get("code") == "database_unavailable":
        response.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
    return response
