"""Domain errors carry a stable machine `code`; the API maps codes to HTTP statuses."""

from __future__ import annotations

from typing import Any


class ZpayError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.extra = extra


class InvalidRequest(ZpayError):
    code = "invalid_request"


class InvalidAmount(InvalidRequest):
    code = "invalid_amount"


class NotFound(ZpayError):
    code = "not_found"


class Unauthorized(ZpayError):
    code = "unauthorized"


class Forbidden(ZpayError):
    code = "forbidden"


class Conflict(ZpayError):
    code = "conflict"


class PaymentRefused(ZpayError):
    """An authorization was refused by the session key or the policy layer."""

    code = "payment_refused"
