"""`kill -9` of a real `zpay serve` while payments are between submit and capture: after
the restart, reconciliation settles every one from the chain and books == chain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.jobs.support import Clock
from tests.support import free_port
from zpay.client.wallet import SolanaWallet
from zpay.jobs.reconcile import authorized_grace
from zpay.jobs.scheduler import run_once
from zpay.settings import Settings
from zpay.store.database import Database
from zpay.store.models import Payment, SessionKey

PAYMENTS = 60
UNIT = 10**6  # one USDC


def env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, "ZPAY_DATABASE_URL": settings.database_url,
            "ZPAY_DATA_DIR": str(settings.data_dir), "ZPAY_MASTER_KEY": settings.master_key,
            "ZPAY_CHAINS": "solana-local", "ZPAY_SCHEDULER": "0"}


def create_merchant(settings: Settings) -> str:
    out = subprocess.run([sys.executable, "-m", "zpay.cli", "merchants", "create", "--name",
                          "shop"], env=env_of(settings), check=True, capture_output=True,
                         text=True).stdout
    match = re.search(r"sk_test_\S+", out)
    assert match, out
    return match.group(0)


async def start_server(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zpay.cli", "serve", "--port", str(port)],
                                env=env_of(settings), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - started < 60, log.read_text()
            try:
                if (await http.get("/health")).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                await asyncio.sleep(0.05)


async def funded_key(url: str, secret: str) -> tuple[str, str, str]:
    """(key id, agent token, session wallet address) of an active 100 USDC key."""
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        user = SolanaWallet.generate()
        (await http.post("/v1/faucet", json={"wallet": user.address, "amount": "100"})
         ).raise_for_status()
        agent = (await http.post("/v1/agents", json={"name": "shopper"})).json()
        key = (await http.post("/v1/session-keys", json={
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "100",
            "expires_in_seconds": 3600, "refund_on_close": False})).json()
        approved = await http.post(f"/v1/session-keys/{key['id']}/approval",
                                   json=user.sign_approval(key))
        assert approved.json()["status"] == "active", approved.text
    return key["id"], agent["token"], key["session_key_address"]


async def pay_until_killed(url: str, token: str, key_id: str, recipient: str,
                           proc: subprocess.Popen[bytes], db: Database) -> None:
    """Many concurrent payments; SIGKILL as soon as one is submitted but not yet settled."""
    headers = {"Authorization": f"Bearer {token}"}

    async def pay(http: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under some
            await http.post("/v1/payments", headers={**headers,
                                                     "Idempotency-Key": str(uuid.uuid4())},
                            json={"session_key_id": key_id, "amount": "1",
                                  "recipient": recipient})

    async def watch() -> None:
        while proc.poll() is None:
            async with db.sessions() as s:
                caught = (await s.execute(select(func.count()).select_from(Payment).where(
                    Payment.status == "submitted"))).scalar_one()
            if caught:
                proc.send_signal(signal.SIGKILL)
                return
            await asyncio.sleep(0.001)

    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=PAYMENTS)) as http:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(pay(http) for _ in range(PAYMENTS)))
        proc.send_signal(signal.SIGKILL)  # if the watcher never caught one
        await watcher
    proc.wait(10)


async def status_counts(s: AsyncSession) -> dict[str, int]:
    rows = await s.execute(select(Payment.status, func.count()).group_by(Payment.status))
    return {status: count for status, count in rows}


@pytest.mark.slow
async def test_kill_9_between_submit_and_capture_then_reconcile(settings: Settings,
                                                                tmp_path: Path) -> None:
    from zpay.api.app import build_context

    secret = create_merchant(settings)
    proc, url = await start_server(settings, tmp_path / "server.log")
    recipient = str(Keypair().pubkey())
    db = Database(settings.database_url, pool_size=2)
    try:
        key_id, token, wallet = await funded_key(url, secret)
        await pay_until_killed(url, token, key_id, recipient, proc, db)
        async with db.sessions() as s:
            before = await status_counts(s)
    finally:
        if proc.poll() is None:
            proc.kill()
        await db.dispose()
    assert proc.returncode == -signal.SIGKILL
    assert before.get("submitted", 0) >= 1, before  # killed between submit and capture

    # The restart: the chain comes back from its ledger, the books from the database.
    ctx = await build_context(settings)
    try:
        ctx.clock = clock = Clock()
        clock.advance(seconds=(authorized_grace(settings) + timedelta(seconds=1)).total_seconds())
        await run_once(ctx)
        async with ctx.db.sessions() as s:
            after = await status_counts(s)
            spent = (await s.execute(select(func.coalesce(func.sum(Payment.amount), 0)).where(
                Payment.status == "succeeded"))).scalar_one()
            key = await s.get(SessionKey, key_id)
        adapter = ctx.chains.get("solana-local")
        usdc = adapter.token("USDC")
        on_chain_recipient = await adapter.balance(recipient, usdc)
        on_chain_wallet = await adapter.balance(wallet, usdc)
    finally:
        await ctx.chains.close()
        await ctx.db.dispose()
    assert set(after) <= {"succeeded", "failed"}, (before, after)
    assert key is not None and key.held_amount == 0
    assert key.spent_amount == spent == on_chain_recipient  # books == chain
    assert on_chain_wallet == 100 * UNIT - spent
    assert key.transaction_count == after.get("succeeded", 0) == spent // UNIT
