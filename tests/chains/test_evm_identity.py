"""evm-local is paired with the books like solana-local: the chain carries zpay's instance
mark, and a chain that lost its history (state file deleted, external anvil restarted
empty) is refused beside books that were kept on the old one. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from tests.chains.test_anvil_lifetime import alive, anvils_on
from tests.support import merchant_api, serve
from zpay.api.app import build_context
from zpay.chains.anvil import AnvilProcess
from zpay.chains.evm_local import INSTANCE_MARK_ADDRESS, redact_url
from zpay.chains.registry import get_network, rpc_env_var
from zpay.services.bootstrap import ChainPairingError
from zpay.services.context import AppContext
from zpay.settings import Settings

ENV = rpc_env_var("evm-local")


@pytest.fixture
def evm_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, chains=("evm-local",), default_chain="evm-local")


@pytest.fixture
async def external_anvil() -> AsyncIterator[AnvilProcess]:
    anvil = AnvilProcess(chain_id=get_network("evm-local").info.chain_id or 31337)
    await anvil.start_async()
    try:
        yield anvil
    finally:
        await anvil.stop_async()


async def use_the_books(ctx: AppContext) -> str:
    """A session key on evm-local: from now on the database holds money of this chain."""
    async with serve(ctx) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "evm-shopper"})
        key = await api.ok(
            "POST",
            "/v1/session-keys",
            {
                "agent_id": agent["id"],
                "user_wallet": Account.create().address,
                "max_amount": "30",
                "chain": "evm-local",
                "expires_in_seconds": 3600,
            },
        )
    assert key["status"] == "pending_approval"
    return str(key["id"])


async def close(ctx: AppContext) -> None:
    await ctx.chains.close()
    await ctx.db.dispose()


async def instance_of(settings: Settings) -> str:
    """Opens (pairing checked), returns the chain's instance id, closes."""
    ctx = await build_context(settings)
    try:
        instance_id = getattr(ctx.chains.get("evm-local"), "instance_id", None)
        assert isinstance(instance_id, str) and len(instance_id) == 64
        return instance_id
    finally:
        await close(ctx)


def stop_leftover_anvils(state_path: Path) -> None:
    """A refused build_context does not close the adapters it built (zpay.api.app): stop
    the embedded anvil it left running (ours, by pid), so it does not linger until exit."""
    pids = anvils_on(state_path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline
        time.sleep(0.05)


async def test_deleted_state_file_is_refused_naming_the_state_dir(
    evm_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    state_dir = evm_settings.data_dir / "chains" / "evm-local"
    state_path = state_dir / "anvil-state.json"

    ctx = await build_context(evm_settings)
    try:
        first = getattr(ctx.chains.get("evm-local"), "instance_id", None)
        await use_the_books(ctx)
    finally:
        await close(ctx)

    # The state kept: the same chain, paired again.
    assert await instance_of(evm_settings) == first

    state_path.unlink()
    try:
        with pytest.raises(ChainPairingError, match=re.escape(str(state_dir))) as refused:
            await build_context(evm_settings)
    finally:
        stop_leftover_anvils(state_path)
    message = str(refused.value)
    assert "another evm-local instance" in message and "fresh chain" in message
    assert str(first) in message  # the instance the books belong to


async def test_external_anvil_restarted_empty_is_refused(
    evm_settings: Settings, monkeypatch: pytest.MonkeyPatch, external_anvil: AnvilProcess
) -> None:
    monkeypatch.setenv(ENV, external_anvil.rpc_url)
    ctx = await build_context(evm_settings)
    try:
        first = getattr(ctx.chains.get("evm-local"), "instance_id", None)
        assert getattr(ctx.chains.get("evm-local"), "_anvil", None) is None  # external
        await use_the_books(ctx)
    finally:
        await close(ctx)

    # The node still holds the chain: paired again.
    assert await instance_of(evm_settings) == first

    # Restarted empty, at the same address.
    port = external_anvil.port
    await external_anvil.stop_async()
    restarted = AnvilProcess(chain_id=external_anvil.chain_id, port=port)
    await restarted.start_async()
    try:
        with pytest.raises(ChainPairingError) as refused:
            await build_context(evm_settings)
    finally:
        await restarted.stop_async()
    message = str(refused.value)
    assert message.startswith(f"the node at http://127.0.0.1:{port} holds another evm-local")
    assert "or a fresh chain" in message and str(first) in message


async def test_the_instance_mark_is_stored_on_the_chain(
    evm_settings: Settings, monkeypatch: pytest.MonkeyPatch, external_anvil: AnvilProcess
) -> None:
    """Written once at the first start, read back unchanged afterwards."""
    monkeypatch.setenv(ENV, external_anvil.rpc_url)
    first = await instance_of(evm_settings)
    assert await instance_of(evm_settings) == first
    async with httpx.AsyncClient() as http:
        stored = await http.post(
            external_anvil.rpc_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_getStorageAt",
                "params": [INSTANCE_MARK_ADDRESS, "0x0", "latest"],
            },
        )
    assert int(stored.json()["result"], 16) == int(first, 16)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://user:secret@node.example/v3/KEY?token=x#f", "https://node.example/…"),
        ("http://[::1]:8545/", "http://[::1]:8545"),
        ("wss://node.example:443/?apikey=1", "wss://node.example:443/…"),
    ],
)
def test_rpc_urls_in_refusals_hide_paths_queries_and_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown
