"""`zpay audit` as an operator runs it: a process beside the database, on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
from solders.keypair import Keypair

from tests.cli.conftest import ZPAY, Result
from tests.services.test_audit import audit_events, unrecorded_transfer
from tests.support import Api, active_key, merchant_api
from zpay.jobs.audit import run_audit
from zpay.services.context import AppContext

USDC = 10**6


@pytest.fixture
async def api(ctx: AppContext, served: str) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        yield await merchant_api(ctx, http)


async def zpay_audit(ctx: AppContext, *args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    env |= {
        "ZPAY_DATABASE_URL": ctx.settings.database_url,
        "ZPAY_DATA_DIR": str(ctx.settings.data_dir),
        "ZPAY_MASTER_KEY": ctx.settings.master_key,
        "ZPAY_CHAINS": "solana-local",
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(ZPAY), "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


async def test_zpay_audit_lists_the_difference_and_exits_1(ctx: AppContext, api: Api) -> None:
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    _agent, fine, _user = await active_key(api, ctx, max_amount="5")
    paid = await api.pay(key["id"], "91", str(Keypair().pubkey()))
    assert paid.status_code == 201, paid.text
    payment_id = paid.json()["id"]
    await unrecorded_transfer(ctx, key["id"], 209 * USDC)
    assert await run_audit(ctx) == 2  # the job reports it first

    # This process has the embedded chain open (as `zpay serve` does): the CLI reads the
    # same chain beside it, through its shared ledger.
    result = await zpay_audit(ctx)
    assert result.code == 1, result
    header, *rows, summary = result.out.splitlines()
    assert header.split() == [
        "KEY",
        "CHAIN",
        "STATE",
        "EXPECTED",
        "ON",
        "CHAIN",
        "DIFFERENCE",
        "PAYMENTS",
    ]
    [row] = rows  # the consistent wallet is only counted
    assert row.split()[:6] == [
        key["id"],
        "solana-local",
        "difference",
        "409.000000",
        "200.000000",
        "-209.000000",
    ]
    assert f"latest: {payment_id} succeeded 91.000000" in row
    assert summary == "audited 2 wallets: 1 consistent, 0 in flight, 1 differences, 0 unreadable"

    every = await zpay_audit(ctx, "--all", "--json")
    assert every.code == 1
    body = json.loads(every.out)
    assert body["summary"] == {"consistent": 1, "in_flight": 0, "difference": 1, "unreadable": 0}
    assert {f["session_key_id"]: f["state"] for f in body["data"]} == {
        key["id"]: "difference",
        fine["id"]: "consistent",
    }

    # Job and CLI record the same way: still exactly one event for one difference.
    [event] = await audit_events(ctx)
    assert (event.type, event.object_id) == ("audit.mismatch", key["id"])
