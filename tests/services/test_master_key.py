"""`zpay keys rotate-master`: every data key re-wrapped under the new master key version, in
bounded batches, resumable; a previous-keys entry with the current version refused."""

from __future__ import annotations

import base64
import dataclasses
import secrets

import httpx
import pytest
from sqlalchemy import select

from tests.support import merchant_api
from zpay.client.wallet import SolanaWallet
from zpay.custody import Custody, CustodyError, custody_from_settings
from zpay.services.context import AppContext
from zpay.services.master_key import rotate_master
from zpay.services.session_keys import load_secret
from zpay.services.webhooks import endpoint_secret
from zpay.store.models import SessionKey, WalletSecret, WebhookEndpoint


def _b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def _secrets(ctx: AppContext) -> tuple[dict[str, bytes], dict[str, str]]:
    async with ctx.db.sessions() as s:
        keys = (await s.execute(select(SessionKey))).scalars().all()
        wallets = {k.id: await load_secret(ctx, s, k) for k in keys}
        endpoints = (await s.execute(select(WebhookEndpoint))).scalars().all()
        hooks = {e.id: endpoint_secret(ctx, e) for e in endpoints}
    return wallets, hooks


async def _versions(ctx: AppContext) -> set[int]:
    async with ctx.db.sessions() as s:
        return set((await s.execute(select(WalletSecret.key_version))).scalars()) | set(
            (await s.execute(select(WebhookEndpoint.secret_key_version))).scalars())


async def test_rotate_master_rewraps_everything_in_resumable_batches(
        ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "bot"})
        for _ in range(3):
            await api.ok("POST", "/v1/session-keys", {
                "agent_id": agent["id"], "user_wallet": SolanaWallet.generate().address,
                "max_amount": "5", "expires_in_seconds": 3600})
        for n in range(2):
            await api.ok("POST", "/v1/webhook-endpoints",
                         {"url": f"http://127.0.0.1:9/hook{n}"})
    before = await _secrets(ctx)
    assert len(before[0]) == 3 and len(before[1]) == 2
    assert await _versions(ctx) == {1}

    old_key = ctx.settings.master_key
    new_settings = dataclasses.replace(ctx.settings, master_key=_b64(), master_key_version=2,
                                       previous_master_keys=f"1:{old_key}")
    rotated = dataclasses.replace(ctx, settings=new_settings, custody=custody_from_settings(
        new_settings.master_key, 2, new_settings.previous_master_keys,
        data_dir=new_settings.data_dir, allow_generated=False))

    partial = await rotate_master(rotated, batch=2, max_batches=1)  # interrupted
    assert partial.batches == 1 and partial.rewrapped["wallet_secrets"] == 2
    assert partial.remaining == {1: 3}
    assert await _versions(ctx) == {1, 2}
    assert await _secrets(rotated) == before  # readable throughout

    report = await rotate_master(rotated, batch=2)  # resumed
    assert report.rewrapped == {"wallet_secrets": 1, "webhook_endpoints": 2}
    assert report.done and report.remaining == {}
    assert await _versions(ctx) == {2}

    # the old master key is no longer needed: the new one alone opens every secret
    only_new = dataclasses.replace(
        rotated, custody=Custody({2: base64.b64decode(new_settings.master_key)}, 2))
    assert await _secrets(only_new) == before
    again = await rotate_master(only_new)
    assert again.batches == 0 and again.done

    # a version nobody configured is named, not a KeyError
    async with ctx.db.transaction() as s:
        row = (await s.execute(select(WalletSecret).limit(1))).scalar_one()
        row.key_version = 7
    with pytest.raises(CustodyError, match="version\\(s\\) 7"):
        await rotate_master(only_new)


def test_a_previous_key_with_the_current_version_is_refused_at_start(tmp_path: object) -> None:
    current, previous = _b64(), _b64()
    with pytest.raises(CustodyError, match="ZPAY_MASTER_KEY_VERSION"):
        custody_from_settings(current, 2, f"1:{previous},2:{previous}",
                              data_dir=tmp_path, allow_generated=False)  # type: ignore[arg-type]
    with pytest.raises(CustodyError, match="twice"):
        custody_from_settings(current, 3, f"1:{previous},1:{previous}",
                              data_dir=tmp_path, allow_generated=False)  # type: ignore[arg-type]
    with pytest.raises(CustodyError, match="version:base64"):
        custody_from_settings(current, 2, previous,
                              data_dir=tmp_path, allow_generated=False)  # type: ignore[arg-type]
    ok = custody_from_settings(current, 2, f"1:{previous}",
                               data_dir=tmp_path, allow_generated=False)  # type: ignore[arg-type]
    assert ok.versions == {1, 2} and ok.current_version == 2
