"""Builds the adapters of the enabled networks from the registry and settings."""

from __future__ import annotations

from pathlib import Path

from zpay.chains.protocol import ChainAdapter, Family
from zpay.chains.registry import get_network
from zpay.chains.relayer_journal import RelayerJournal
from zpay.settings import Settings


async def build_adapter(
    name: str, settings: Settings, journal: RelayerJournal | None = None
) -> ChainAdapter:
    """`journal`: where EVM relayer transactions are journaled. Every process sharing a
    relayer key must share it (`zpay.store.relayer_journal.DbRelayerJournal`); None keeps
    it in this process's memory."""
    spec = get_network(name)
    if spec.info.family is Family.SOLANA:
        from zpay.chains.solana import SolanaAdapter

        if spec.info.local and not spec.rpc_url:
            return SolanaAdapter.local(spec, state_dir=_state_dir(settings, name))
        if spec.info.local:
            # A test validator: sets up its own fee payer, faucet and mints.
            return await SolanaAdapter.local_rpc(
                spec,
                state_dir=_state_dir(settings, name),
                commitment=settings.solana_commitment,
                confirm_timeout_s=settings.confirm_timeout_s,
            )
        import base58

        return SolanaAdapter.rpc(
            spec,
            fee_payer_secret=base58.b58decode(settings.solana_fee_payer_key),
            commitment=settings.solana_commitment,
            confirm_timeout_s=settings.confirm_timeout_s,
        )
    from zpay.chains.evm import EvmAdapter, EvmOptions, local_options

    # No single RPC request outlasts confirm_timeout_s (a frozen node fails fast).
    timeout_s = settings.confirm_timeout_s
    options = (
        local_options(timeout_s)
        if spec.info.local
        else EvmOptions(confirm_timeout_s=timeout_s, request_timeout_s=timeout_s)
    )
    return await EvmAdapter.open(
        spec,
        settings.evm_relayer_key,
        state_dir=_state_dir(settings, name),
        options=options,
        journal=journal,
    )


def _state_dir(settings: Settings, name: str) -> Path:
    return settings.data_dir / "chains" / name
