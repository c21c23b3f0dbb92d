"""`zpay demo` on a fresh environment: exit 0, and its final books equal the chain balances."""

from __future__ import annotations

import os
import subprocess
import time
from decimal import Decimal

import pytest

from tests.cli.conftest import ZPAY
from zpay.demo import books_from_output


@pytest.mark.parametrize("chain", ["solana-local", "evm-local"])
def test_demo_books_equal_the_chain(chain: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    started = time.monotonic()
    proc = subprocess.run([str(ZPAY), "demo", "--chain", chain], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    out = proc.stdout
    for reason in ("per_transaction_limit", "insufficient_session_balance", "daily_limit",
                   "session_key_revoked"):
        assert f"refused, {reason}" in out
    assert "refund done: 10.000000 USDC" in out
    rows = {holder: (books, chain_) for holder, books, chain_ in books_from_output(out)}
    assert rows == {
        "user wallet": (Decimal(40), Decimal(40)),
        "session wallet": (Decimal(0), Decimal(0)),
        "merchant wallet": (Decimal(60), Decimal(60)),
        "total": (Decimal(100), Decimal(100)),
    }
    assert "books == chain" in out
