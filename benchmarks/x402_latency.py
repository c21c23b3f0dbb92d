"""Extra latency of an x402 call paid through zpay versus a direct call with a local key.

One run on evm-local (anvil, automine) with x402's own resource server and facilitator
(tests/x402/support.py), zpay served over loopback HTTP with SQLite:

- direct: x402's own httpx client signs with a local key (402 → sign → retry → settled);
- zpay:   `afetch_with_payment` — 402 → POST /v1/x402/payments (both layers, hold,
          signed by the session wallet) → retry → settled → PAYMENT-RESPONSE reported
          (zpay checks the chain and captures).

Both include the facilitator's settlement (it waits for the receipt) — the same for both.

    .venv/bin/python -m benchmarks.x402_latency [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from eth_account import Account
from tests.integration.test_evm_lifecycle import sign
from tests.support import merchant_api, serve
from tests.x402.reference import reference_client
from tests.x402.support import x402_resource_server

from zpay.api.app import build_context
from zpay.client.aio import AsyncZpay
from zpay.client.x402 import afetch_with_payment
from zpay.settings import Settings
from zpay.store.migrate import upgrade


async def run(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            Settings(database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'zpay.db'}",
                     data_dir=Path(tmp) / "data",
                     master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                     scheduler_enabled=False),
            chains=("evm-local",), default_chain="evm-local")
        await asyncio.to_thread(upgrade, settings.database_url)
        ctx = await build_context(settings)
        try:
            async with serve(ctx) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
                api = await merchant_api(ctx, http)
                user = Account.create()
                await api.ok("POST", "/v1/faucet", {"wallet": user.address, "amount": "100"})
                agent = await api.ok("POST", "/v1/agents", {"name": "bench"})
                key = await api.ok("POST", "/v1/session-keys", {
                    "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "50",
                    "chain": "evm-local", "expires_in_seconds": 3600,
                    "approval_method": "eip3009"})
                await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", sign(user, key))
                adapter = ctx.chains.get("evm-local")
                local = Account.create()
                await adapter.faucet(local.address, adapter.token("USDC"), 50 * 10**6)
                merchant = Account.create().address
                async with x402_resource_server(adapter, pay_to=merchant,  # type: ignore[arg-type]
                                                amount_base_units=1_000) as resource:
                    direct, via = [], []
                    async with reference_client(local, resource.network, timeout=60) as ref, \
                            AsyncZpay(agent["token"], base_url=url) as zpay, \
                            httpx.AsyncClient(timeout=60) as plain:
                        for _ in range(calls):  # interleaved: both see the same chain
                            t0 = time.perf_counter()
                            r = await ref.get(resource)
                            direct.append(time.perf_counter() - t0)
                            assert r.status_code == 200, r.text
                            t0 = time.perf_counter()
                            paid = await afetch_with_payment(
                                zpay, resource, session_key_id=key["id"], max_amount="0.01",
                                http=plain)
                            via.append(time.perf_counter() - t0)
                            assert paid.response.status_code == 200, paid.response.text
                            assert paid.payment is not None
                            assert paid.payment.status == "succeeded"
                d, v = statistics.median(direct), statistics.median(via)
                print(f"x402 call, {calls} each, median (p50) latency")
                print(f"  direct, local key (x402 client): {d * 1000:8.1f} ms")
                print(f"  through zpay (session key):      {v * 1000:8.1f} ms")
                print(f"  extra: {(v - d) * 1000:.1f} ms   ratio zpay/direct: {v / d:.2f}x")
        finally:
            await ctx.chains.close()
            await ctx.db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
