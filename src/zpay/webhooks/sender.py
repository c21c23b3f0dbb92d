"""POST one signed webhook to a merchant endpoint and report what happened.

The sender never raises for anything the network or the merchant does: the
outcome is data (:class:`DeliveryResult`) for the delivery log and the retry
schedule. Safety properties, each needed because the URL is untrusted:

- the URL is checked again at send time and the connection goes to the
  checked address (see ``pinning``), so DNS rebinding cannot redirect it;
- redirects are not followed: a 3xx could point anywhere, so it is a failed
  delivery reported with its status;
- proxies from the environment are ignored: a proxy would resolve the name
  itself, past the check;
- at most ``max_response_bytes`` of the body is read, uncompressed, so a
  hostile endpoint cannot make the worker buffer gigabytes;
- error texts never include the URL's credentials.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import httpx

from zpay.webhooks.pinning import PINNED_TARGET_EXTENSION, PinnedTransport
from zpay.webhooks.ssrf import Resolver, UnsafeWebhookUrl, resolve_pinned

DEFAULT_MAX_RESPONSE_BYTES: Final = 4096
DEFAULT_USER_AGENT: Final = "zpay-webhooks/1"
_MAX_ERROR_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One attempt's outcome. ``error is None`` exactly when the endpoint answered 2xx."""

    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class WebhookSender:
    """Delivers webhooks over one reusable connection pool; close with :meth:`aclose`."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        resolver: Resolver | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_connections: int = 100,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self._resolver = resolver
        self._max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            transport=PinnedTransport(verify=verify, max_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
            headers={
                "user-agent": user_agent,
                "content-type": "application/json",
                # Decompression would turn the byte cap on reads into a cap on
                # compressed bytes only.
                "accept-encoding": "identity",
            },
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        allow_private: bool,
        timeout_s: float,
    ) -> DeliveryResult:
        """POST ``body`` to ``url``; ``timeout_s`` bounds the whole attempt, DNS included."""
        started = time.perf_counter()
        status: int | None = None
        excerpt = b""

        def result(error: str | None) -> DeliveryResult:
            latency_ms = round((time.perf_counter() - started) * 1000)
            text = excerpt.decode("utf-8", "replace")
            return DeliveryResult(status, latency_ms, error, text)

        try:
            async with asyncio.timeout(timeout_s):
                target = await resolve_pinned(
                    url, allow_private=allow_private, resolver=self._resolver
                )
                request = self._client.build_request(
                    "POST",
                    target.url,
                    content=body,
                    headers=dict(headers),
                    timeout=timeout_s,
                    extensions={PINNED_TARGET_EXTENSION: target},
                )
                response = await self._client.send(request, stream=True)
                status = response.status_code
                try:
                    excerpt = await _read_capped(response, self._max_response_bytes)
                finally:
                    await response.aclose()
        except UnsafeWebhookUrl as exc:
            return result(str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return result(f"timed out after {timeout_s:g}s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return result(_describe(exc, url))

        if status is not None and 200 <= status < 300:
            return result(None)
        if status is not None and 300 <= status < 400:
            return result(f"redirect not followed (HTTP {status})")
        return result(f"HTTP {status}")


async def send(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout_s: float,
) -> DeliveryResult:
    """One-off delivery; loops should hold a :class:`WebhookSender` to reuse connections."""
    async with WebhookSender() as sender:
        return await sender.send(
            url, body, headers, allow_private=allow_private, timeout_s=timeout_s
        )


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    received = bytearray()
    async for chunk in response.aiter_raw():
        received += chunk[: limit - len(received)]
        if len(received) >= limit:
            break  # the rest is dropped when the response is closed
    return bytes(received)


def _describe(exc: BaseException, url: str) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        parts = urlsplit(url)
        secrets_in_url = [s for s in (parts.password, parts.username) if s]
    except ValueError:
        secrets_in_url = []
    for secret in secrets_in_url:
        text = text.replace(secret, "***")
    return text[:_MAX_ERROR_CHARS]
