"""The tokens of one EVM network, as the adapter knows them (pure).

Callers pass `TokenInfo`s around; the adapter only ever acts on its OWN record of a token
(`own`), so nobody can smuggle in another contract address or EIP-712 domain under a
known symbol.
"""

from __future__ import annotations

from collections.abc import Mapping

from zpay.chains import evm_tx
from zpay.chains.protocol import ChainError, FlowNotSupported, TokenInfo
from zpay.chains.registry import TokenSpec


def native_token() -> TokenInfo:
    """ETH as a token (address "native"): for the fallback approval and the faucet."""
    return TokenInfo(
        symbol="ETH", address=evm_tx.NATIVE_ASSET, decimals=18, max_base_units=evm_tx.UINT256_MAX
    )


def supports_eip3009(token: TokenInfo) -> bool:
    return (
        bool(token.address)
        and not evm_tx.is_native(token.address)
        and token.eip712_name is not None
        and token.eip712_version is not None
    )


class TokenBook:
    def __init__(
        self,
        network: str,
        chain_id: int,
        specs: Mapping[str, TokenSpec],
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self._network = network
        self._chain_id = chain_id
        # By symbol; `evm_local` fills in the addresses of the test tokens it deploys.
        self.by_symbol: dict[str, TokenInfo] = {}
        for symbol, t in specs.items():
            address = dict(overrides or {}).get(symbol, t.address)
            if address and not evm_tx.is_native(address):
                address = evm_tx.checksum(address)
            self.by_symbol[symbol] = TokenInfo(
                symbol=symbol,
                address=address,
                decimals=t.decimals,
                max_base_units=evm_tx.UINT256_MAX,
                eip712_name=t.eip712_name,
                eip712_version=t.eip712_version,
            )

    def token(self, symbol: str) -> TokenInfo:
        token = self.by_symbol.get(symbol)
        if token is None:
            raise ChainError(f"{self._network} has no token {symbol!r}", code="unknown_token")
        if not token.address:
            raise ChainError(f"{symbol} is not deployed on {self._network}", code="unknown_token")
        return token

    def own(self, token: TokenInfo) -> TokenInfo:
        if evm_tx.is_native(token.address):
            return native_token()
        own = self.by_symbol.get(token.symbol)
        if own is None or not own.address or not evm_tx.same_address(own.address, token.address):
            raise ChainError(
                f"{token.symbol} at {token.address} is not a token of {self._network}",
                code="unknown_token",
            )
        return own

    def by_address(self, address: str) -> TokenInfo:
        for token in self.by_symbol.values():
            if token.address and evm_tx.same_address(token.address, address):
                return token
        raise ChainError(f"{address} is not a token of {self._network}", code="unknown_token")

    def eip3009(self) -> list[TokenInfo]:
        return [t for t in self.by_symbol.values() if supports_eip3009(t)]

    def require_eip3009(self, token: TokenInfo) -> None:
        if not supports_eip3009(token):
            raise FlowNotSupported(
                f"{token.symbol} on {self._network} has no EIP-3009: session wallets "
                "cannot pay with it without holding gas"
            )

    def domain(self, token: TokenInfo) -> evm_tx.TokenDomain:
        self.require_eip3009(token)
        assert token.eip712_name is not None and token.eip712_version is not None
        return evm_tx.TokenDomain(
            name=token.eip712_name,
            version=token.eip712_version,
            chain_id=self._chain_id,
            verifying_contract=token.address,
        )
