"""Network registry: reads the data files of the top-level `chains/networks/` folder.

The installed wheel carries the same files as `zpay/_chains_data`; a checkout reads them
from the repository root. A network's RPC URL is overridable by
`ZPAY_RPC_URL_<NAME>` (name upper-cased, dashes as underscores).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from zpay.chains.protocol import ChainError, Family, NetworkInfo


class UnknownNetwork(ChainError):
    code = "unknown_chain"


@dataclass(frozen=True)
class TokenSpec:
    symbol: str
    address: str
    decimals: int
    eip712_name: str | None
    eip712_version: str | None


@dataclass(frozen=True)
class NetworkSpec:
    info: NetworkInfo
    rpc_url: str
    tokens: Mapping[str, TokenSpec]
    raw: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The network's name as people read it ("Base Sepolia (testnet)")."""
        return str(self.raw.get("label") or self.info.name)

    @property
    def wallet_chain(self) -> str:
        """The chain id wallets use: Wallet Standard ("solana:devnet") or CAIP-2 ("eip155:8453")."""
        if self.info.chain_id is not None:
            return f"eip155:{self.info.chain_id}"
        return str(self.raw.get("wallet_chain") or f"{self.info.family}:{self.info.name}")

    @property
    def x402_networks(self) -> tuple[str, ...]:
        """How x402 names this network: its CAIP-2 id (v2) first, then its v1 name(s)."""
        caip2 = (f"eip155:{self.info.chain_id}" if self.info.chain_id is not None
                 else str(self.raw.get("x402_network") or ""))
        v1 = self.raw.get("x402_v1_networks") or []
        return tuple(n for n in (caip2, *(str(x) for x in v1)) if n)

    def explorer_url(self, tx_id: str | None) -> str | None:
        """The transaction on the network's public explorer; None without one (local)."""
        template = str(self.raw.get("explorer_tx") or "")
        return template.replace("{tx}", tx_id) if template and tx_id else None


def chains_data_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_chains_data"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "chains"
    if checkout.is_dir():
        return checkout
    raise RuntimeError("zpay chain registry not found (neither zpay/_chains_data nor ./chains)")


def rpc_env_var(name: str) -> str:
    return "ZPAY_RPC_URL_" + name.upper().replace("-", "_")


def _parse(doc: Mapping[str, Any], environ: Mapping[str, str]) -> NetworkSpec:
    name = str(doc["name"])
    tokens = {
        symbol: TokenSpec(
            symbol=symbol,
            address=str(t.get("address", "")),
            decimals=int(t["decimals"]),
            eip712_name=t.get("eip712_name"),
            eip712_version=t.get("eip712_version"),
        )
        for symbol, t in dict(doc.get("tokens", {})).items()
    }
    info = NetworkInfo(
        name=name,
        family=Family(str(doc["family"])),
        chain_id=int(doc["chain_id"]) if "chain_id" in doc else None,
        environment=str(doc.get("environment", "test")),
        local=bool(doc.get("local", False)),
        confirmations=int(doc.get("confirmations", 1)),
    )
    rpc_url = environ.get(rpc_env_var(name)) or str(doc.get("rpc_url", ""))
    return NetworkSpec(info=info, rpc_url=rpc_url, tokens=tokens, raw=doc)


@cache
def _load_documents() -> tuple[Mapping[str, Any], ...]:
    folder = chains_data_dir() / "networks"
    return tuple(tomllib.loads(p.read_text()) for p in sorted(folder.glob("*.toml")))


def known_networks() -> list[str]:
    return sorted(str(d["name"]) for d in _load_documents())


def get_network(name: str, environ: Mapping[str, str] | None = None) -> NetworkSpec:
    import os

    env = os.environ if environ is None else environ
    for doc in _load_documents():
        if doc["name"] == name:
            return _parse(doc, env)
    raise UnknownNetwork(
        f"unknown chain {name!r}; known chains: {', '.join(known_networks())}",
    )
