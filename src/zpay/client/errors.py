"""Typed SDK errors. Each carries the problem's stable machine `code`, so callers branch on
`exc.code == "daily_limit"`, never on message text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ZpayError(Exception):
    """Base of every SDK error. `status` is None when no HTTP response was received."""

    def __init__(self, detail: str, *, code: str = "error", status: int | None = None,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.detail} ({where}{self.code})"


class APIConnectionError(ZpayError):
    """The server could not be reached (after retries), or the connection broke mid-request."""


class WaitTimeout(ZpayError):
    """A `wait_*` helper gave up before the resource reached the awaited state."""


class InvalidRequest(ZpayError):
    """400/422: the request was malformed or refused as invalid (bad amount, tampered
    approval, unknown chain, …)."""


class AuthenticationError(ZpayError):
    """401: missing, unknown, rotated or frozen credentials."""


class PaymentRefused(ZpayError):
    """402: the session key or its linked policy refused the payment; `code` says why
    (`per_transaction_limit`, `daily_limit`, `insufficient_session_balance`, …)."""


class PaymentFailed(PaymentRefused):
    """402 from `payments.create`: the payment was accepted but ended `failed` (nothing
    moved; the hold was released). `code` is its `failure_code`; `payment` is the payment."""

    def __init__(self, detail: str, *, payment: Any, code: str = "error",
                 status: int | None = None, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail, code=code, status=status, body=body)
        self.payment = payment  # zpay.client.types.Payment


class PermissionDenied(ZpayError):
    """403: the credentials are valid but may not do this (e.g. an agent token creating limits)."""


class NotFound(ZpayError):
    """404: no such resource for these credentials (another merchant's ids look the same)."""


class Conflict(ZpayError):
    """409: the resource is in a state that does not allow this (already revoked, in flight)."""


class ServerError(ZpayError):
    """5xx: the server or a chain failed."""


class ServiceUnavailable(ServerError):
    """503: temporarily unavailable (retried automatically before being raised)."""


_BY_STATUS: dict[int, type[ZpayError]] = {
    400: InvalidRequest, 401: AuthenticationError, 402: PaymentRefused, 403: PermissionDenied,
    404: NotFound, 409: Conflict, 422: InvalidRequest, 503: ServiceUnavailable,
}


def error_for(status: int, body: Any, fallback_text: str = "") -> ZpayError:
    """The typed error for an HTTP error response (problem+json or anything else)."""
    problem: dict[str, Any] = dict(body) if isinstance(body, Mapping) else {}
    code = str(problem.get("code") or f"http_{status}")
    detail = str(problem.get("detail") or problem.get("title") or fallback_text.strip()
                 or f"HTTP {status}")
    if status == 402 and isinstance(problem.get("payment"), Mapping):
        from zpay.client.types import Payment

        return PaymentFailed(detail, payment=Payment.from_json(problem["payment"]), code=code,
                             status=status, body=problem)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ZpayError)
    return cls(detail, code=code, status=status, body=problem)
