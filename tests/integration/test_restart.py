"""Books and the local chain survive a restart together, or the server refuses to start."""

from __future__ import annotations

import dataclasses
import shutil

import httpx
import pytest
from solders.keypair import Keypair

from tests.support import active_key, merchant_api, serve
from zpay.api.app import build_context
from zpay.services.bootstrap import ChainPairingError
from zpay.settings import Settings
from zpay.store.database import NotMigrated


async def test_state_survives_restart_and_fresh_chain_is_refused(settings: Settings) -> None:
    ctx = await build_context(settings)
    try:
        async with serve(ctx) as url, httpx.AsyncClient(base_url=url) as client:
            api = await merchant_api(ctx, client)
            _, key, _ = await active_key(api, ctx, max_amount="10")
            to = str(Keypair().pubkey())
            assert (await api.pay(key["id"], "4", to)).status_code == 201
    finally:
        await ctx.chains.close()
        await ctx.db.dispose()

    again = await build_context(settings)
    try:
        adapter = again.chains.get("solana-local")
        token = adapter.token("USDC")
        assert token.address == key["token_address"]
        assert await adapter.balance(key["session_key_address"], token) == 6 * 10**6
        assert await adapter.balance(to, token) == 4 * 10**6
        async with serve(again) as url, httpx.AsyncClient(base_url=url) as client:
            api.http = client
            assert (await api.pay(key["id"], "6", to)).status_code == 201
            status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
            assert status["status"] == "exhausted"
    finally:
        await again.chains.close()
        await again.db.dispose()

    shutil.rmtree(settings.data_dir / "chains")
    with pytest.raises(ChainPairingError, match="state directory"):
        await build_context(settings)


async def test_unmigrated_database_is_refused(tmp_path: object) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/empty.db",
                        data_dir=tmp_path / "d", scheduler_enabled=False)  # type: ignore[operator]
    with pytest.raises(NotMigrated, match="zpay db upgrade"):
        await build_context(dataclasses.replace(settings))


async def test_health_and_openapi(ctx: object, served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        schema = (await http.get("/schema/openapi.json")).json()
        assert "/v1/payments" in schema["paths"]
        missing = await http.get("/v1/nothing-here")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
