"""What every use case needs, built once at start-up and passed down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from zpay.chains.protocol import ChainAdapter, TokenInfo
from zpay.chains.registry import UnknownNetwork, known_networks
from zpay.custody import Custody
from zpay.domain.errors import InvalidRequest
from zpay.settings import Settings
from zpay.store.database import Database


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ChainSet:
    """The adapters of the networks this deployment serves, by registry name."""

    adapters: dict[str, ChainAdapter] = field(default_factory=dict)

    def get(self, name: str) -> ChainAdapter:
        adapter = self.adapters.get(name)
        if adapter is not None:
            return adapter
        if name in known_networks():
            raise InvalidRequest(
                f"chain {name!r} is not enabled on this deployment; enabled: "
                f"{', '.join(sorted(self.adapters))}", code="chain_not_enabled",
            )
        raise InvalidRequest(
            f"unknown chain {name!r}; known chains: {', '.join(known_networks())}",
            code=UnknownNetwork.code, known_chains=known_networks(),
        )

    def token(self, chain: str, symbol: str) -> TokenInfo:
        try:
            return self.get(chain).token(symbol)
        except InvalidRequest:
            raise
        except Exception as exc:
            raise InvalidRequest(f"token {symbol!r} is not available on {chain}",
                                 code="unknown_token") from exc

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()


@dataclass
class AppContext:
    settings: Settings
    db: Database
    custody: Custody
    chains: ChainSet
    clock: Callable[[], datetime] = utc_now

    def now(self) -> datetime:
        return self.clock()
