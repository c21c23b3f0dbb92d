"""Signing cost per payment on each chain, EVM with and without coincurve (one process per
backend, because eth-keys picks its backend at import).

    .venv/bin/python -m benchmarks.signing [--n 2000]
Prints a table; `--worker` is the internal per-backend entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT, table


def measure_solana(n: int) -> float:
    from solders.hash import Hash
    from solders.keypair import Keypair

    from zpay.chains import solana_tx

    fee_payer, owner, dest, mint = Keypair(), Keypair(), Keypair().pubkey(), Keypair().pubkey()
    blockhash = Hash.new_unique()
    started = time.perf_counter()
    for i in range(n):
        solana_tx.build_transfer(fee_payer=fee_payer, owner=owner, destination_owner=dest,
                                 mint=mint, decimals=6, amount_base_units=1_000_000,
                                 recent_blockhash=blockhash, reference_seed=f"bench:{i}")
    return (time.perf_counter() - started) / n * 1e6


def measure_evm(n: int) -> float:
    """Per payment: the session wallet signs the EIP-3009 authorization and the relayer signs
    the transaction that submits it."""
    from zpay.chains import evm_tx

    session, relayer = evm_tx.new_private_key(), evm_tx.new_private_key()
    domain = evm_tx.TokenDomain("USD Coin", "2", 31337, "0x" + "11" * 20)
    started = time.perf_counter()
    for i in range(n):
        auth = evm_tx.Authorization(evm_tx.address_of(session), "0x" + "22" * 20, 1_000_000, 0,
                                    2**40, evm_tx.payment_nonce(f"bench:{i}"))
        evm_tx.sign_authorization(session, domain, auth)
        evm_tx.sign_relayer_transaction(relayer, chain_id=31337, nonce=i, to="0x" + "11" * 20,
                                        data=b"\x00" * 356, gas=120_000,
                                        max_fee_per_gas=2 * 10**9,
                                        max_priority_fee_per_gas=10**9)
    return (time.perf_counter() - started) / n * 1e6


def worker(n: int) -> None:
    from zpay.chains import evm_tx

    result = {"backend": evm_tx.ecc_backend_name(), "evm_us": measure_evm(n)}
    if os.environ.get("BENCH_SOLANA") == "1":
        result["solana_us"] = measure_solana(n)
    print(json.dumps(result))


def run(n: int, env: dict[str, str]) -> dict[str, float | str]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.signing", "--worker", "--n", str(n)],
                         env={**os.environ, **env}, cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.n)
        return
    fast = run(args.n, {"BENCH_SOLANA": "1"})
    slow = run(max(args.n // 10, 50),
               {"ECC_BACKEND_CLASS": "eth_keys.backends.NativeECCBackend"})
    solana_us, evm_fast, evm_slow = (float(fast["solana_us"]), float(fast["evm_us"]),
                                     float(slow["evm_us"]))
    rows = [
        ["solana (2 ed25519: session wallet + fee payer)", "solders", f"{solana_us:,.0f}", "1.0x"],
        ["evm (EIP-3009 auth + relayer tx)", str(fast["backend"]), f"{evm_fast:,.0f}",
         f"{evm_fast / solana_us:.1f}x"],
        ["evm (EIP-3009 auth + relayer tx)", str(slow["backend"]), f"{evm_slow:,.0f}",
         f"{evm_slow / solana_us:.1f}x"],
    ]
    print(table(["signing per payment", "backend", "µs/payment", "vs solana"], rows))
    print(f"\ncoincurve speed-up on EVM signing: {evm_slow / evm_fast:.1f}x")


if __name__ == "__main__":
    main()
