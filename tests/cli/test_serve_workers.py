"""`zpay serve --workers N` runs where several processes can share the state: PostgreSQL
and one chain (the embedded solana-local, or a node reached over RPC); elsewhere it
refuses with one sentence naming the fix. Two real workers stay exact."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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
from benchmarks.books_vs_chain import Proc, run_zpay, zpay_cmd
from benchmarks.common import psql
from solders.keypair import Keypair

from tests.conftest import PG_DSN
from tests.support import free_port, spent_within_limits
from zpay.api.workers import CannotFork, check_multiprocess
from zpay.chains.registry import get_network
from zpay.chains.solana import SolanaAdapter
from zpay.client.wallet import SolanaWallet
from zpay.settings import Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/x"
USDC = 10**6


def _settings(tmp_path: Path, url: str, chains: tuple[str, ...]) -> Settings:
    base = Settings.from_env({"ZPAY_DATABASE_URL": url, "ZPAY_DATA_DIR": str(tmp_path)})
    return dataclasses.replace(base, chains=chains)


def test_sqlite_keeps_one_writer_process(tmp_path: Path) -> None:
    with pytest.raises(CannotFork, match="needs PostgreSQL"):
        check_multiprocess(_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/z.db",
                                     ("solana-devnet",)))


def test_an_embedded_anvil_belongs_to_one_process(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZPAY_RPC_URL_EVM_LOCAL", raising=False)
    with pytest.raises(CannotFork, match="ZPAY_RPC_URL_EVM_LOCAL"):
        check_multiprocess(_settings(tmp_path, PG, ("solana-local", "evm-local")))


def test_postgresql_with_the_embedded_solana_or_a_shared_node_can_fork(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZPAY_RPC_URL_SOLANA_LOCAL", raising=False)
    check_multiprocess(_settings(tmp_path, PG, ("solana-local", "solana-devnet")))
    monkeypatch.setenv("ZPAY_RPC_URL_EVM_LOCAL", "http://127.0.0.1:8545")
    check_multiprocess(_settings(tmp_path, PG, ("evm-local",)))


FUNDS, DAY = 100, 60


async def _pay_64(url: str, api_key: str) -> tuple[dict[str, Any], str, list[tuple[int, str]]]:
    """One key funded with 100, linked to a session allowing 60 a day; 64 concurrent
    payments of random amounts; each one's final status."""
    merchant = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        user = SolanaWallet.generate()
        (await http.post("/v1/faucet", headers=merchant, json={
            "wallet": user.address, "amount": str(FUNDS)})).raise_for_status()
        agent = (await http.post("/v1/agents", headers=merchant, json={"name": "bot"})).json()
        session = (await http.post("/v1/sessions", headers=merchant, json={
            "agent_id": agent["id"], "max_per_day": str(DAY), "max_per_week": "100000",
            "max_per_month": "100000"})).json()
        key = (await http.post("/v1/session-keys", headers=merchant, json={
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": str(FUNDS),
            "session_id": session["id"], "expires_in_seconds": 3600})).json()
        approved = (await http.post(f"/v1/session-keys/{key['id']}/approval",
                                    headers=merchant, json=user.sign_approval(key))).json()
        assert approved["status"] == "active", approved
        assert Decimal(approved["funded_amount"]) == FUNDS

        recipient = str(Keypair().pubkey())
        rng = random.Random("two workers")
        agent_auth = {"Authorization": f"Bearer {agent['token']}"}

        async def pay(amount: int) -> tuple[int, str]:
            resp = await http.post("/v1/payments", headers={
                **agent_auth, "Idempotency-Key": str(uuid.uuid4())}, json={
                "session_key_id": key["id"], "amount": str(amount), "recipient": recipient})
            body = resp.json()
            if resp.status_code == 402 and "payment" not in body:
                return amount, body["code"]  # refused before anything was held
            assert resp.status_code == 201, (resp.status_code, body)  # final on a local chain
            return amount, body["status"]

        results = await asyncio.gather(*(pay(rng.randint(1, 9)) for _ in range(64)))
    return key, recipient, list(results)


def test_two_workers_on_the_embedded_solana_chain_are_exact(tmp_path: Path) -> None:
    """`zpay serve --workers 2` on PostgreSQL and the embedded solana-local: both workers
    coalesce their share of 64 concurrent payments on one key; the key's row lock orders
    their transactions and the chain's ledger lock their sends. What succeeds is exactly
    what the balance and the day window allow, and the chain, opened beside the running
    server, agrees with the books to the base unit."""
    database = f"zpay_workers_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{database}"')
    data_dir = tmp_path / "data"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")},
           "ZPAY_DATA_DIR": str(data_dir),
           "ZPAY_DATABASE_URL": f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{database}",
           "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "ZPAY_CHAINS": "solana-local", "ZPAY_DEFAULT_CHAIN": "solana-local",
           "ZPAY_LOG_LEVEL": "WARNING", "ZPAY_RATE_LIMIT_ENABLED": "0"}
    port = free_port()
    server = Proc("serve", zpay_cmd("serve", "--port", str(port), "--workers", "2",
                                    "--no-scheduler"), env, tmp_path / "serve.log", port)
    try:
        run_zpay(["db", "upgrade"], env)
        api_key = json.loads(run_zpay(["merchants", "create", "--name", "shop", "--json"],
                                      env).stdout)["api_key"]
        server.start()
        server.wait_ready()
        assert server.proc is not None
        workers = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        assert len(workers.read_text().split()) == 2
        key, recipient, results = asyncio.run(_pay_64(server.url, api_key))
        chain = SolanaAdapter.local(get_network("solana-local"),
                                    data_dir / "chains" / "solana-local")
        try:
            token = chain.token("USDC")
            on_chain = asyncio.run(_balances(chain, token, [recipient,
                                                            key["session_key_address"]]))
        finally:
            asyncio.run(chain.close())
    finally:
        server.stop()
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    spent = spent_within_limits(results, funds=FUNDS, day=DAY)
    assert on_chain == [spent * USDC, (FUNDS - spent) * USDC]  # the chain agrees


async def _balances(chain: SolanaAdapter, token: Any, owners: list[str]) -> list[int]:
    return [await chain.balance(owner, token) for owner in owners]


def test_coalesced_transactions_per_process_are_a_setting(tmp_path: Path) -> None:
    base = {"ZPAY_DATABASE_URL": PG, "ZPAY_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).hot_path_transactions == 1
    assert Settings.from_env({**base, "ZPAY_HOT_PATH_TRANSACTIONS": "4"}
                             ).hot_path_transactions == 4
    with pytest.raises(ValueError, match="ZPAY_HOT_PATH_TRANSACTIONS: must be at least 1"):
        Settings.from_env({**base, "ZPAY_HOT_PATH_TRANSACTIONS": "0"})
