"""The edge: what every request must pass before its parameters or body are parsed.

A guard (guards run before Litestar reads the handler's parameters) checks, in this order:

1. authentication, for every handler that takes a `principal`: an unauthenticated request is
   401 whatever its body, path or query — nothing of it is parsed first;
2. path and query: a NUL character is refused (`invalid_characters`, 422) — PostgreSQL cannot
   store or compare it, SQLite would;
3. the body, for handlers that take one: JSON only (`unsupported_media_type`, 415), at most
   `MAX_BODY_BYTES` (`request_body_too_large`, 413, enforced by Litestar while reading),
   well-formed UTF-8 JSON (`malformed_json`, 400), nested at most `MAX_JSON_DEPTH` deep
   (`malformed_json`), and no NUL character in any key or string (`invalid_characters`).

The body is read once here and cached by Litestar for the handler's own parsing.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler

from zpay.domain.errors import ZpayError
from zpay.services.auth import Principal, authenticate

MAX_BODY_BYTES = 64 * 1024  # the largest legitimate body (an EVM typed-data approval) is ~2 KB
MAX_JSON_DEPTH = 32
PRINCIPAL_STATE_KEY = "zpay_principal"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class MalformedJson(ZpayError):
    """400: the body is not well-formed UTF-8 JSON of a sane depth."""

    code = "malformed_json"


class UnsupportedMediaType(ZpayError):
    """415: a body sent with another Content-Type than JSON."""

    code = "unsupported_media_type"


class InvalidCharacters(ZpayError):
    """422: a NUL character in the path, the query or a string of the body."""

    code = "invalid_characters"


def _takes(handler: BaseRouteHandler, name: str) -> bool:
    return name in handler.parsed_fn_signature.parameters


def _takes_json(handler: BaseRouteHandler) -> bool:
    """Whether the handler takes a JSON body (`data` without another declared encoding)."""
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return False
    media = getattr(field.kwarg_definition, "media_type", None)
    return media is None or media == RequestEncodingType.JSON


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                            and media.endswith("+json"))


def check_json_value(value: Any) -> None:
    """Depth and NUL check of a decoded JSON value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidCharacters("strings may not contain a NUL character")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise MalformedJson(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def decode_body(body: bytes) -> Any:
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise MalformedJson("the body is not well-formed UTF-8 JSON") from None
    check_json_value(value)
    return value


async def edge_guard(connection: ASGIConnection[Any, Any, Any, Any],
                     handler: BaseRouteHandler) -> None:
    if _takes(handler, "principal"):
        principal: Principal = await authenticate(connection.app.state.ctx,
                                                  connection.headers.get("authorization"))
        connection.scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal  # type: ignore[typeddict-item]
    if "\x00" in connection.scope["path"] or any(
        "\x00" in k or "\x00" in v for k, v in connection.query_params.multi_items()
    ):
        raise InvalidCharacters("the path and query may not contain a NUL character")
    if (isinstance(connection, Request) and connection.method in _BODY_METHODS
            and _takes_json(handler)):
        content_type = connection.headers.get("content-type")
        body = await connection.body()  # RequestEntityTooLarge past MAX_BODY_BYTES
        if content_type is None and not body:
            return  # no body at all: the handler's validation names the missing fields
        if content_type is None or not _is_json(content_type):
            raise UnsupportedMediaType("send the body as application/json")
        decode_body(body)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The principal the guard authenticated for this request, if any."""
    state = connection.scope.get("state") or {}
    principal = state.get(PRINCIPAL_STATE_KEY)
    return principal if isinstance(principal, Principal) else None
