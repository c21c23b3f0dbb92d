"""Per-key coalescing stays exact across real server processes: two `zpay serve` on one
PostgreSQL and one anvil mining a block a second, 64 concurrent payments of random amounts
on ONE key funded with 100 and linked to a session allowing 60 a day, sent to both servers
at once. Each process coalesces its own share into one transaction; the key's row lock
orders the two. The sum of what succeeds is exactly what the balance and the day window
allow, and the chain (read over raw JSON-RPC) agrees with the books to the base unit."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from benchmarks.books_vs_chain import EvmChain, Proc, run_zpay, zpay_cmd
from benchmarks.common import psql
from eth_account import Account

from tests.conftest import PG_DSN
from tests.support import free_port, spent_within_limits
from zpay.chains.anvil import AnvilProcess
from zpay.client.wallet import EvmWallet

pytestmark = pytest.mark.slow

USDC = 10**6
FUNDS, DAY = 100, 60


async def _final(http: httpx.AsyncClient, url: str, token: str,
                 payment: dict[str, Any]) -> dict[str, Any]:
    """A payment answered 202 (in flight), followed until the chain decides it."""
    for _ in range(600):
        if payment["status"] in ("succeeded", "failed"):
            return payment
        await asyncio.sleep(0.2)
        payment = (await http.get(f"{url}/v1/payments/{payment['id']}",
                                  headers={"Authorization": f"Bearer {token}"})).json()
    raise AssertionError(f"payment {payment['id']} never became final: {payment}")


async def _run(urls: list[str], api_key: str, rpc_url: str) -> None:
    merchant = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(timeout=120) as http:
        user = EvmWallet.generate()
        (await http.post(f"{urls[0]}/v1/faucet", headers=merchant, json={
            "wallet": user.address, "amount": str(FUNDS), "chain": "evm-local"})
         ).raise_for_status()
        agent = (await http.post(f"{urls[0]}/v1/agents", headers=merchant,
                                 json={"name": "bot"})).json()
        session = (await http.post(f"{urls[0]}/v1/sessions", headers=merchant, json={
            "agent_id": agent["id"], "max_per_day": str(DAY), "max_per_week": "100000",
            "max_per_month": "100000"})).json()
        key = (await http.post(f"{urls[0]}/v1/session-keys", headers=merchant, json={
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": str(FUNDS),
            "chain": "evm-local", "session_id": session["id"],
            "expires_in_seconds": 3600})).json()
        approved = (await http.post(f"{urls[0]}/v1/session-keys/{key['id']}/approval",
                                    headers=merchant, json=user.sign_approval(key))).json()
        assert approved["status"] == "active", approved
        assert Decimal(approved["funded_amount"]) == FUNDS

        recipient = Account.create().address
        rng = random.Random("two servers")
        amounts = [rng.randint(1, 9) for _ in range(64)]
        agent_auth = {"Authorization": f"Bearer {agent['token']}"}

        async def pay(i: int, amount: int) -> tuple[int, str]:
            url = urls[i % 2]
            resp = await http.post(f"{url}/v1/payments", headers={
                **agent_auth, "Idempotency-Key": str(uuid.uuid4())}, json={
                "session_key_id": key["id"], "amount": str(amount), "recipient": recipient})
            body = resp.json()
            if resp.status_code == 402 and "payment" not in body:
                return amount, body["code"]  # refused before anything was held
            assert resp.status_code in (201, 202, 402), (resp.status_code, body)
            payment = await _final(http, url, agent["token"], body.get("payment", body))
            return amount, payment["status"]

        results = await asyncio.gather(*(pay(i, a) for i, a in enumerate(amounts)))

    spent = spent_within_limits(results, funds=FUNDS, day=DAY)

    chain = EvmChain(rpc_url)
    try:
        token = key["token_address"]
        [to_recipient, in_wallet] = await chain.balances(
            token, [recipient, key["session_key_address"]])
    finally:
        await chain.close()
    assert to_recipient == spent * USDC  # the chain agrees with the books
    assert in_wallet == (FUNDS - spent) * USDC


def test_64_concurrent_payments_through_two_server_processes_are_exact(
        tmp_path: Path) -> None:
    anvil = AnvilProcess(block_time_s=1, state_path=None)
    anvil.start()
    database = f"zpay_two_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{database}"')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")},
           "ZPAY_DATA_DIR": str(tmp_path / "data"),
           "ZPAY_DATABASE_URL": f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{database}",
           "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "ZPAY_CHAINS": "evm-local", "ZPAY_DEFAULT_CHAIN": "evm-local",
           "ZPAY_RPC_URL_EVM_LOCAL": anvil.rpc_url, "ZPAY_SCHEDULER": "1",
           "ZPAY_LOG_LEVEL": "WARNING", "ZPAY_RATE_LIMIT_ENABLED": "0"}
    servers: list[Proc] = []
    try:
        run_zpay(["db", "upgrade"], env)
        api_key = json.loads(run_zpay(["merchants", "create", "--name", "shop", "--json"],
                                      env).stdout)["api_key"]
        for i in range(2):
            port = free_port()
            servers.append(Proc(f"serve-{i}", zpay_cmd("serve", "--port", str(port)), env,
                                tmp_path / f"serve-{i}.log", port))
        servers[0].start()  # the first one deploys the token and creates the relayer key
        servers[0].wait_ready()
        servers[1].start()
        servers[1].wait_ready()
        asyncio.run(_run([s.url for s in servers], api_key, anvil.rpc_url))
    finally:
        for server in servers:
            server.stop()
        anvil.stop()
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
