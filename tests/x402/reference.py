"""x402's OWN client paying with a local key: the baseline the harness and the benchmark
compare zpay against (no zpay involved)."""

from __future__ import annotations

from typing import Any

import httpx
from x402 import x402Client
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner


def reference_client(account: Any, network: str, **kw: Any) -> httpx.AsyncClient:
    """An httpx client that answers 402s with x402's own EVM `exact` client scheme."""
    # The test token is no x402 default asset: allow it explicitly (the client refuses
    # unknown assets by default).
    client = x402Client().set_spend_controls(False)
    client.register(network, ExactEvmClientScheme(EthAccountSigner(account)))  # type: ignore[arg-type]
    return x402HttpxClient(client, **kw)
