"""Payments per second and p50/p99 latency from request to confirmed, 16 concurrent agents
(each its own session key), on solana-local (LiteSVM) and evm-local (anvil), SQLite store.

    .venv/bin/python -m benchmarks.payments [--payments 800] [--agents 16]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from solders.keypair import Keypair

from benchmarks.authorizations import run_zpay, zpay_env
from benchmarks.common import VENV_BIN, LoadResult, Server, closed_loop, free_port, table
from zpay.client.wallet import SolanaWallet

FAILURES: list[str] = []  # a few answers that were not a confirmed payment, to print


def sign_evm(user: Any, approval: dict[str, Any]) -> dict[str, Any]:
    typed = approval["approval"]["typed_data"]
    signature = Account.sign_typed_data(user.key, full_message=typed).signature.to_0x_hex()
    return {"signature": signature}


async def make_keys(http: httpx.AsyncClient, chain: str, agents: int,
                    per_key: int) -> list[tuple[str, str]]:
    async def one() -> tuple[str, str]:
        if chain.startswith("solana"):
            wallet = SolanaWallet.generate()
            address, signer = wallet.address, wallet.sign_approval
        else:
            account = Account.create()
            address = account.address

            def signer(approval: dict[str, Any]) -> dict[str, Any]:
                return sign_evm(account, approval)
        (await http.post("/v1/faucet", json={"wallet": address, "amount": str(per_key),
                                             "chain": chain})).raise_for_status()
        agent = (await http.post("/v1/agents", json={"name": "bench"})).json()
        key = (await http.post("/v1/session-keys", json={
            "agent_id": agent["id"], "user_wallet": address, "max_amount": str(per_key),
            "chain": chain, "expires_in_seconds": 86400})).json()
        (await http.post(f"/v1/session-keys/{key['id']}/approval",
                         json=signer(key))).raise_for_status()
        return key["id"], agent["token"]

    return [await one() for _ in range(agents)]


def bench(chain: str, payments: int, agents: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**zpay_env(f"sqlite+aiosqlite:///{tmp}/zpay.db", Path(tmp)),
               "ZPAY_CHAINS": "solana-local,evm-local"}
        run_zpay(["db", "upgrade"], env)
        match = re.search(r"(sk_test_\w+)", run_zpay(["merchants", "create", "--name", "b"], env))
        assert match is not None
        port = free_port()
        server = Server([str(VENV_BIN / "zpay"), "serve", "--port", str(port)], env, port)
        try:
            server.wait_ready(timeout_s=120)

            async def prepare() -> list[tuple[str, str]]:
                async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={
                        "Authorization": f"Bearer {match.group(1)}"}) as http:
                    return await make_keys(http, chain, agents, payments)

            keys = asyncio.run(prepare())
            to = str(Keypair().pubkey()) if chain.startswith("solana") else Account.create().address

            async def pay(http: httpx.AsyncClient, i: int) -> bool:
                key_id, token = keys[i % agents]
                resp = await http.post("/v1/payments", headers={
                    "Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
                    json={"session_key_id": key_id, "amount": "1", "recipient": to})
                ok = resp.status_code == 201 and resp.json()["status"] == "succeeded"
                if not ok and len(FAILURES) < 5:
                    body = resp.json()
                    FAILURES.append(f"{chain}: {resp.status_code} {body.get('status')} "
                                    f"{body.get('failure_code') or body.get('code')}")
                return ok

            return asyncio.run(closed_loop(agents, payments, pay, server.url))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=800)
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--chains", default="solana-local,evm-local")
    args = parser.parse_args()
    chains = args.chains.split(",")
    results = {chain: bench(chain, args.payments, args.agents) for chain in chains}
    base = results[chains[0]].per_second
    rows = [[chain, f"{r.per_second:,.1f}", f"{r.quantile(0.5):.0f}", f"{r.quantile(0.99):.0f}",
             str(r.errors), f"{r.per_second / base:.2f}x"] for chain, r in results.items()]
    print(f"\n{args.agents} concurrent agents, {args.payments} payments, request -> confirmed\n")
    print(table(["chain", "payments/s", "p50 ms", "p99 ms", "errors", "vs solana"], rows))
    for failure in FAILURES:
        print("not confirmed:", failure)


if __name__ == "__main__":
    main()
