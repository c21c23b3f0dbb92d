"""An httpx transport that connects only to addresses the SSRF guard checked.

The request keeps its URL, so the Host header and the TLS server name (SNI and
certificate check) are the merchant's hostname; only the TCP connect is
redirected, to the :class:`~zpay.webhooks.ssrf.PinnedTarget` carried in the
request's extensions. Resolving again here would let a DNS answer that changed
since the check (rebinding) pick the destination.

httpcore opens connections inside the pool call made by the requesting task,
so a context variable hands the target to the network backend. Should that
ever stop being true, the backend finds no target and refuses to connect:
failing closed, never falling back to DNS.

A pooled keep-alive connection is reused only for the same scheme, host and
port, and was opened to an address checked by an earlier send; the keep-alive
expiry bounds how old that check can be.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import httpcore
import httpx

from zpay.webhooks.ssrf import PinnedTarget

PINNED_TARGET_EXTENSION: Final = "zpay.pinned_target"

_current_target: ContextVar[PinnedTarget | None] = ContextVar(
    "zpay_webhook_pinned_target", default=None
)

# Most specific first: isinstance picks the first match.
_ERROR_MAP: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    # httpx callers expect httpx exceptions; httpcore's stay inside the transport.
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _ERROR_MAP:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc), request=request) from exc
        raise


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Connects to the current request's checked addresses instead of resolving ``host``."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        target = _current_target.get()
        if target is None or (target.host, target.port) != (host, port):
            raise httpcore.ConnectError(f"no checked address for {host}:{port}; not connecting")
        failure: Exception | None = None
        # Try each checked address in resolver order, like a plain client would,
        # so a dual-stack host with one dead family still gets its delivery.
        for ip in target.addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # PinnedTarget always holds at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        with _httpx_errors(self._request):
            await self._stream.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """httpx transport over an httpcore pool whose connections go to pinned addresses."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 100,
        keepalive_expiry_s: float = 30.0,
    ) -> None:
        ssl_context = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)
        )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
            network_backend=PinnedNetworkBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = request.extensions.get(PINNED_TARGET_EXTENSION)
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("PinnedTransport needs an async request body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        token = _current_target.set(target if isinstance(target, PinnedTarget) else None)
        try:
            with _httpx_errors(request):
                response = await self._pool.handle_async_request(core_request)
        finally:
            _current_target.reset(token)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
