"""Timing knobs of the EVM adapter (defaults suit public networks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvmOptions:
    """Timing knobs. Defaults suit public networks; `local_options()` tightens the
    polling. No single RPC request ever outlasts `confirm_timeout_s`."""

    approval_ttl_s: int = 3600  # how long the user has to sign a funding approval
    payment_validity_s: int = 900  # validBefore of payments/sweeps: bounds a stuck tx
    expiry_margin_s: int = 10  # don't relay what would expire before inclusion
    confirm_timeout_s: float = 120.0
    poll_interval_s: float = 1.0
    heal_interval_s: float = 5.0  # how often a wait checks for dropped relayer txs
    stuck_after_s: float = 90.0  # an unmined head-of-queue relayer tx gets higher fees
    request_timeout_s: float = 30.0  # one RPC request; capped at confirm_timeout_s
    log_lookback_blocks: int = 5000  # tx-id lookup window (public RPCs cap log ranges)
    gas_headroom_percent: int = 25
    relayer_min_balance_wei: int = 10**20  # local networks top the relayer up to this

    @property
    def request_bound_s(self) -> float:
        """What one RPC request may take: request_timeout_s, never above the confirm
        timeout (a frozen node must not hold a caller longer than that)."""
        return min(self.request_timeout_s, self.confirm_timeout_s)


def local_options(confirm_timeout_s: float = 30.0) -> EvmOptions:
    return EvmOptions(
        confirm_timeout_s=confirm_timeout_s,
        request_timeout_s=confirm_timeout_s,
        poll_interval_s=0.05,
        heal_interval_s=0.5,
        stuck_after_s=5.0,
        expiry_margin_s=2,
    )


def _local_options(options: EvmOptions | None) -> EvmOptions:
    return options if options is not None else local_options()
