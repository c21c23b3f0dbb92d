"""Authorizations per second on ONE hot session key, 32 concurrent HTTP clients, the full
payment path on solana-local (authorize + hold, sign, submit, confirm, capture), on SQLite
and PostgreSQL — and the same load against a bare Litestar endpoint doing one trivial
database transaction, so zpay's overhead is a ratio.

    .venv/bin/python benchmarks/authorizations.py [--requests 2000] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import secrets
import subprocess
import tempfile
import uuid
from pathlib import Path

import httpx
from solders.keypair import Keypair

from benchmarks.common import (
    ROOT,
    VENV_BIN,
    LoadResult,
    Server,
    closed_loop,
    free_port,
    recreate_pg_database,
    table,
)
from zpay.client.wallet import SolanaWallet

WARM_UP = 100


def zpay_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {"ZPAY_DATABASE_URL": database_url, "ZPAY_DATA_DIR": str(data_dir),
            "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "ZPAY_SCHEDULER": "0", "ZPAY_LOG_LEVEL": "WARNING"}


def run_zpay(args: list[str], env: dict[str, str]) -> str:
    import os

    out = subprocess.run([str(VENV_BIN / "zpay"), *args], env={**os.environ, **env}, cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return out.stdout


async def prepare_hot_key(base_url: str, api_key: str, requests: int) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {api_key}"}
    user = SolanaWallet.generate()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        amount = str(requests + WARM_UP)  # 1 USDC per payment: never exhausted during the run
        (await http.post("/v1/faucet", json={"wallet": user.address,
                                             "amount": amount})).raise_for_status()
        agent = (await http.post("/v1/agents", json={"name": "bench"})).json()
        key = (await http.post("/v1/session-keys", json={
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": amount,
            "expires_in_seconds": 86400})).json()
        resp = await http.post(f"/v1/session-keys/{key['id']}/approval",
                               json=user.sign_approval(key))
        resp.raise_for_status()
    return key["id"], agent["token"]


def bench_zpay(database_url: str, requests: int, clients: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        env = zpay_env(database_url, Path(tmp))
        run_zpay(["db", "upgrade"], env)
        api_key = re.search(r"(sk_test_\w+)", run_zpay(["merchants", "create", "--name", "b"],
                                                       env)).group(1)  # type: ignore[union-attr]
        port = free_port()
        server = Server([str(VENV_BIN / "zpay"), "serve", "--port", str(port)], env, port)
        try:
            server.wait_ready()
            key_id, agent_token = asyncio.run(prepare_hot_key(server.url, api_key, requests))
            to = str(Keypair().pubkey())
            headers = {"Authorization": f"Bearer {agent_token}"}

            async def pay(http: httpx.AsyncClient, _i: int) -> bool:
                resp = await http.post("/v1/payments", headers={
                    **headers, "Idempotency-Key": str(uuid.uuid4())}, json={
                    "session_key_id": key_id, "amount": "1", "recipient": to})
                return resp.status_code == 201

            asyncio.run(closed_loop(clients, WARM_UP, pay, server.url))
            return asyncio.run(closed_loop(clients, requests, pay, server.url))
        finally:
            server.stop()


def bench_bare(database_url: str, requests: int, clients: int) -> LoadResult:
    port = free_port()
    server = Server([str(VENV_BIN / "uvicorn"), "benchmarks.bare_app:app", "--port", str(port),
                     "--log-level", "warning"], {"BENCH_DATABASE_URL": database_url}, port)
    try:
        server.wait_ready("/schema")

        async def call(http: httpx.AsyncClient, _i: int) -> bool:
            return (await http.post("/tx")).status_code == 200

        asyncio.run(closed_loop(clients, WARM_UP, call, server.url))
        return asyncio.run(closed_loop(clients, requests, call, server.url))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        databases = {
            "sqlite": (f"sqlite+aiosqlite:///{tmp}/zpay.db", f"sqlite+aiosqlite:///{tmp}/bare.db"),
            "postgresql": (recreate_pg_database("zpay_bench"),
                           recreate_pg_database("zpay_bench_bare")),
        }
        for name, (zpay_url, bare_url) in databases.items():
            full = bench_zpay(zpay_url, args.requests, args.clients)
            bare = bench_bare(bare_url, args.requests, args.clients)
            for label, r in ((f"zpay payment ({name})", full), (f"bare 1-tx ({name})", bare)):
                rows.append([label, f"{r.per_second:,.0f}", f"{r.quantile(0.5):.1f}",
                             f"{r.quantile(0.99):.1f}", str(r.errors)])
            rows.append([f"  ratio bare/zpay ({name})", f"{bare.per_second / full.per_second:.1f}x",
                         "", "", ""])
    print(f"\n{args.clients} concurrent clients, {args.requests} requests each run, one hot key\n")
    print(table(["endpoint", "req/s", "p50 ms", "p99 ms", "errors"], rows))


if __name__ == "__main__":
    main()
