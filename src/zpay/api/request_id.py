"""The id of the request being answered: accepted from `X-Request-Id` when sane, else made.

Set by `zpay.api.observability` for the whole request, read by the problem builder so every
problem+json body carries it, and by the access log line.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
_current: ContextVar[str | None] = ContextVar("zpay_request_id", default=None)


def accept_or_generate(value: str | None) -> str:
    """A client's id when it is 1-128 printable characters of a conservative set (safe to
    log and echo); otherwise a fresh one."""
    if value is not None and _SANE.fullmatch(value):
        return value
    return "req_" + secrets.token_hex(12)


def current_request_id() -> str | None:
    return _current.get()


def set_request_id(value: str | None) -> object:
    return _current.set(value)


def reset_request_id(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
