"""The EVM node connection: bounded requests, no retries, no secrets in errors.

A frozen node (accepts the connection, never answers) must cost one request bounded by
the adapter's options — not web3's default of 5 attempts of 30 s — and an RPC URL (which
for a hosted node carries an API key) must never reach an error message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from zpay.chains import evm_tx
from zpay.chains.evm import EvmAdapter, EvmOptions
from zpay.chains.evm_node import redact, redact_url, translated
from zpay.chains.factory import build_adapter
from zpay.chains.protocol import ChainError, ChainUnavailable, PreparedTransfer
from zpay.chains.registry import get_network
from zpay.settings import Settings

SECRET = "k3y-THAT-must-not-leak"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read()  # accepts, reads, never answers
    finally:
        writer.close()


async def _unauthorized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def serve(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v2/{SECRET}"
    finally:
        server.close()


@pytest.fixture
async def frozen_url() -> AsyncIterator[str]:
    async for url in serve(_frozen):
        yield url


@pytest.fixture
async def unauthorized_url() -> AsyncIterator[str]:
    async for url in serve(_unauthorized):
        yield url


def adapter_at(url: str, options: EvmOptions) -> EvmAdapter:
    return EvmAdapter.rpc(
        get_network("base-sepolia", environ={}),
        evm_tx.new_private_key(),
        rpc_url=url,
        options=options,
    )


def leaks(exc: BaseException) -> bool:
    """Whether the secret is in the message or in any exception it is chained to."""
    seen: BaseException | None = exc
    while seen is not None:
        if SECRET in str(seen) or SECRET in repr(seen):
            return True
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


async def test_calls_reuse_kept_alive_connections() -> None:
    """A node answering with HTTP keep-alive: 30 calls, one after the other, then 8 at
    once, open as many connections as were ever busy at once — not one per call (web3's
    own session closes each connection after one request)."""
    accepted = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = json.loads(await reader.readexactly(length))
                body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x2a"})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async for url in serve(keep_alive):
        adapter = adapter_at(url, EvmOptions(confirm_timeout_s=5))
        try:
            for _ in range(30):
                assert await adapter.node.block_number() == 42
            assert accepted == 1
            calls = (adapter.node.block_number() for _ in range(8))
            assert await asyncio.gather(*calls) == [42] * 8
            assert accepted <= 8
        finally:
            await adapter.close()


async def test_a_frozen_node_fails_each_call_within_the_request_bound(frozen_url: str) -> None:
    options = EvmOptions(confirm_timeout_s=0.5)  # request_timeout_s (30 s) is capped at it
    bound_s = options.request_bound_s
    assert bound_s == 0.5
    adapter = adapter_at(frozen_url, options)
    usdc = adapter.token("USDC")
    session = adapter.generate_wallet()
    reference = f"{session.address}:0x{'11' * 32}:2000000000"
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "balance": lambda: adapter.balance(session.address, usdc),
        "status": lambda: adapter.transfer_status(reference),
        "prepare": lambda: adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination="0x" + "22" * 20,
            token=usdc,
            amount_base_units=1,
            reference_seed="p",
        ),
        "resync": adapter.resync_relayer,
    }
    try:
        for name, call in calls.items():
            started = time.monotonic()
            # One request, bounded: with web3's retries it would be 5 of them, plus backoff.
            async with asyncio.timeout(2 * bound_s + 1):
                with pytest.raises(ChainUnavailable) as info:
                    await call()
            assert time.monotonic() - started < 2 * bound_s + 1, name
            assert "did not answer in time" in str(info.value), (name, info.value)
            assert not leaks(info.value), (name, info.value)
    finally:
        await adapter.close()


async def test_sending_to_a_frozen_node_is_bounded_too(frozen_url: str) -> None:
    options = EvmOptions(confirm_timeout_s=0.5)
    adapter = adapter_at(frozen_url, options)
    transfer = PreparedTransfer(
        reference="tx:0x" + "33" * 32 + ":0x" + "44" * 20 + ":0", payload=b"{}"
    )
    try:
        async with asyncio.timeout(2 * options.request_bound_s + 1):
            with pytest.raises(ChainError):
                await adapter.submit_transfer(transfer)
            with pytest.raises(ChainUnavailable):
                await adapter.wait_for_transfer(transfer.reference, timeout_s=0)
    finally:
        await adapter.close()


async def test_web3_retries_are_off_and_requests_bounded_by_the_confirm_timeout() -> None:
    settings = Settings(
        chains=("base-sepolia",),
        confirm_timeout_s=7.0,
        evm_relayer_key="0x" + evm_tx.new_private_key().hex(),
    )
    adapter = await build_adapter("base-sepolia", settings)
    try:
        assert isinstance(adapter, EvmAdapter)
        assert adapter.node.request_timeout_s == 7.0
        provider = adapter.node.w3.provider
        assert getattr(provider, "exception_retry_configuration", "missing") is None
    finally:
        await adapter.close()
    # Never above the confirm timeout, whatever the request timeout says.
    assert EvmOptions(confirm_timeout_s=3.0, request_timeout_s=60.0).request_bound_s == 3.0
    assert EvmOptions(confirm_timeout_s=60.0, request_timeout_s=3.0).request_bound_s == 3.0


async def test_errors_never_carry_the_rpc_url(unauthorized_url: str) -> None:
    dead = f"http://127.0.0.1:9/v2/{SECRET}?apikey={SECRET}"
    for url in (unauthorized_url, dead):
        adapter = adapter_at(url, EvmOptions(confirm_timeout_s=5.0))
        try:
            with pytest.raises(ChainUnavailable) as info:
                await adapter.balance("0x" + "11" * 20, adapter.token("USDC"))
            assert not leaks(info.value), info.value
        finally:
            await adapter.close()


def test_redaction_keeps_scheme_host_and_port_only() -> None:
    assert redact_url(f"https://user:{SECRET}@rpc.example:8545/v3/{SECRET}?key={SECRET}") == (
        "https://rpc.example:8545/…"
    )
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    text = f"401, message='Unauthorized', url='https://base.example/v2/{SECRET}'"
    assert SECRET not in redact(text) and "https://base.example/…" in redact(text)
    with pytest.raises(ChainUnavailable) as info, translated("read"):
        raise OSError(f"cannot reach wss://node.example/{SECRET}")
    assert not leaks(info.value)
