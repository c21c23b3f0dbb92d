"""The one table mapping domain and chain errors to problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from zpay.chains.protocol import ChainError
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
    "unknown_chain": 422, "unknown_token": 422, "flow_not_supported": 422,
    "transfer_failed": 502, "chain_unavailable": 503, "chain_error": 502,
    "approval_pending": 202, "approval_in_flight": 409, "approval_link_expired": 410,
}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Refused", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
           422: "Unprocessable Content", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


def problem(status: int, code: str, detail: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"type": f"https://zpay.dev/errors/{code}", "title": _TITLES.get(status, "Error"),
            "status": status, "code": code, "detail": detail, **extra}
    return status, body


def problem_for(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, ZpayError):
        status = _BY_CODE.get(exc.code)
        if status is None:
            status = next((st for cls, st in _BY_CLASS if isinstance(exc, cls)), 422)
        return problem(status, exc.code, exc.message, **exc.extra)
    if isinstance(exc, ChainError):
        log.warning("chain error reached the API: %s (%s)", redact(str(exc)), exc.code)
        return problem(_BY_CODE.get(exc.code, 502), exc.code, message_for(exc.code))
    if isinstance(exc, ValidationException):
        return problem(422, "invalid_request", "the request body or parameters are invalid",
                       errors=_safe_extra(exc.extra))
    if isinstance(exc, NotFoundException):
        return problem(404, "route_not_found", "no such route")
    if isinstance(exc, HTTPException):
        code = "method_not_allowed" if exc.status_code == 405 else "http_error"
        return problem(exc.status_code, code, str(exc.detail))
    if isinstance(exc, CustodyError):
        log.error("custody failure: %s", type(exc).__name__)
        return problem(500, "custody_error", "a wallet secret could not be opened")
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal_error", "an internal error occurred")


def _safe_extra(extra: Any) -> Any:
    if isinstance(extra, list):
        return [{k: v for k, v in item.items() if k in ("key", "message", "source")}
                if isinstance(item, dict) else str(item) for item in extra]
    return None


def problem_response(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, media_type=PROBLEM)


def handle_exception(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem_response(*problem_for(exc))
