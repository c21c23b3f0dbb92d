"""The one small protocol every chain family implements.

Services talk only to `ChainAdapter`; they never branch on the chain. An operation a
chain cannot do raises `FlowNotSupported`. Library errors are translated into the
`ChainError` family at the adapter boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class ChainError(Exception):
    """Base of every error an adapter raises. `code` is a stable machine code."""

    code = "chain_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FlowNotSupported(ChainError):
    code = "flow_not_supported"


class InvalidAddress(ChainError):
    code = "invalid_address"


class ApprovalMismatch(ChainError):
    """The signed approval is not byte-for-byte / field-for-field what zpay issued."""

    code = "approval_mismatch"


class ApprovalSignatureInvalid(ChainError):
    """The approval is not signed by `user_wallet`."""

    code = "approval_signature_invalid"


class ApprovalExpired(ChainError):
    """The approval's validity (Solana blockhash, EIP-3009 validBefore) lapsed."""

    code = "approval_expired"


class ApprovalRejected(ChainError):
    """The chain refused the approval (e.g. the user lacks the funds, nonce reused)."""

    code = "approval_rejected"


class TransferFailed(ChainError):
    code = "transfer_failed"


class ChainUnavailable(ChainError):
    """The node could not be reached, refused the call or answered unreadably: every one is
    counted (`zpay_chain_rpc_errors_total{kind}`), wherever it is caught."""

    code = "chain_unavailable"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        from zpay.metrics import process_metrics  # a leaf module: no import cycle

        process_metrics().chain_rpc_error(type(self).__name__)


class ConfirmationTimeout(ChainError):
    """Submitted, but not confirmed within the timeout: it MAY still confirm. Unlike the
    other errors this does not mean "nothing moved"; repeat the same call (it is
    idempotent) or reconcile from the chain."""

    code = "confirmation_timeout"


class Family(enum.StrEnum):
    SOLANA = "solana"
    EVM = "evm"


@dataclass(frozen=True)
class TokenInfo:
    symbol: str
    address: str  # SPL mint or ERC-20 contract address
    decimals: int
    max_base_units: int  # u64 on SPL, uint256 on ERC-20
    eip712_name: str | None = None
    eip712_version: str | None = None


@dataclass(frozen=True)
class NetworkInfo:
    name: str  # registry name, e.g. "solana-local"
    family: Family
    chain_id: int | None
    environment: str  # "test" or "live" (token prefixes: sk_test_, sk_live_)
    local: bool  # embedded / dev network: faucet allowed
    confirmations: int


@dataclass(frozen=True)
class GeneratedWallet:
    address: str
    secret: bytes  # raw private key material; encrypt immediately, never log


@dataclass(frozen=True)
class IssuedApproval:
    """What zpay hands the user to sign, plus what it must remember to check it."""

    public: dict[str, Any]  # returned to the API caller (e.g. approval_transaction base64)
    private: dict[str, Any]  # stored server-side, JSON-serialisable, no secrets
    expires_at: datetime | None


@dataclass(frozen=True)
class ChainReceipt:
    tx_id: str
    amount_base_units: int = 0


class TransferState(enum.StrEnum):
    PENDING = "pending"  # submitted, not yet final
    CONFIRMED = "confirmed"
    FAILED = "failed"  # final failure, nothing moved
    UNKNOWN = "unknown"  # the chain has never seen it (dropped / never submitted)


@dataclass(frozen=True)
class TransferStatus:
    state: TransferState
    tx_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PreparedTransfer:
    """A signed transfer, ready to send. `reference` is recorded BEFORE submission and is
    enough for `transfer_status` to find the transfer again after a crash; submitting the
    same prepared transfer twice can never move funds twice."""

    reference: str
    payload: bytes
    # Validity in chain terms, recorded with the transfer so ANY process can decide
    # finality from the chain alone: EVM `validBefore` (unix seconds, judged against block
    # timestamps); Solana the blockhash's last valid block height. None: no bound known.
    valid_until: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class X402Exact:
    """An x402 `exact` requirement as the chain needs it (amount in base units)."""

    pay_to: str
    asset: str
    amount_base_units: int
    validity_s: int  # how long the signed payment may land (from maxTimeoutSeconds)
    extra: Mapping[str, Any] = field(default_factory=dict)  # the entry's `extra`


@dataclass(frozen=True)
class X402Signed:
    """What the session wallet signed for an x402 `exact` payment: the scheme's `payload`
    object for the payment header, and how zpay follows it on chain. The resource
    server's facilitator submits it; zpay never sends `prepared`."""

    payload: Mapping[str, Any]
    prepared: PreparedTransfer


@runtime_checkable
class ChainAdapter(Protocol):
    network: NetworkInfo

    def token(self, symbol: str) -> TokenInfo:
        """Token by symbol (e.g. "USDC"); raises ChainError(code="unknown_token")."""
        ...

    def validate_address(self, address: str) -> str:
        """Canonical form of `address` or InvalidAddress."""
        ...

    def reserved_recipients(self, session_wallet: str, token: TokenInfo) -> frozenset[str]:
        """Canonical addresses a payment from `session_wallet` in `token` must never go to:
        the wallet itself and what the chain or zpay's own plumbing uses around it (Solana:
        its token account, the mint, the fee payer, the programs; EVM: the token contract,
        the relayer)."""
        ...

    def generate_wallet(self) -> GeneratedWallet: ...

    async def build_approval(
        self,
        *,
        approval_id: str,
        user_wallet: str,
        session_wallet: str,
        token: TokenInfo,
        amount_base_units: int,
        method: str | None = None,
    ) -> IssuedApproval:
        """Build the funding approval user_wallet -> session_wallet for the user to sign."""
        ...

    async def prepare_approval(
        self,
        *,
        issued: IssuedApproval,
        user_wallet: str,
        session_wallet: str,
        token: TokenInfo,
        amount_base_units: int,
        signed: Mapping[str, Any],
    ) -> PreparedTransfer:
        """Check the signed approval against what was issued and return it as a transfer
        ready to send (co-signed where zpay pays the fees), WITHOUT sending it: the caller
        records it durably first, then `submit_transfer` / `transfer_status` finish it like
        any transfer. Raises ApprovalMismatch / ApprovalSignatureInvalid / ApprovalExpired
        (its validity already lapsed and it never landed); nothing moves when it raises.
        An approval that already landed is returned all the same (its status says so)."""
        ...

    async def submit_approval(
        self,
        *,
        issued: IssuedApproval,
        user_wallet: str,
        session_wallet: str,
        token: TokenInfo,
        amount_base_units: int,
        signed: Mapping[str, Any],
    ) -> ChainReceipt:
        """Convenience: prepare, submit and wait for confirmation. Raises
        ApprovalMismatch / ApprovalSignatureInvalid / ApprovalExpired / ApprovalRejected;
        nothing moves when it raises."""
        ...

    async def prepare_transfer(
        self,
        *,
        secret: bytes,
        source: str,
        destination: str,
        token: TokenInfo,
        amount_base_units: int,
        reference_seed: str,
        close_source: bool = False,
    ) -> PreparedTransfer:
        """Sign a transfer from the session wallet; the platform pays fees.
        `reference_seed` is the payment's identity; it must make the transfer unique.
        `close_source`: the amount is the wallet's whole balance (a refund); the chain may
        close what the wallet occupies (Solana: its token account, rent back to zpay)."""
        ...

    async def submit_transfer(self, prepared: PreparedTransfer) -> None: ...

    async def sign_x402_exact(
        self, *, secret: bytes, source: str, token: TokenInfo, exact: X402Exact,
        reference_seed: str,
    ) -> X402Signed:
        """Sign an x402 `exact` payment from the session wallet (the facilitator pays the
        fees). `reference_seed` is the payment's identity. Raises ChainError (e.g.
        `x402_domain_mismatch`) when the requirement is not one zpay can sign safely."""
        ...

    async def transfer_status(
        self, reference: str, *, valid_until: int | None = None
    ) -> TransferStatus:
        """What the chain says of a transfer, from the chain alone (no process memory):
        CONFIRMED once landed (and deep enough); FAILED only when the chain PROVES it can
        never land (EVM: authorization unused at a block stamped past validBefore; Solana:
        signature unknown while the block height is past `valid_until`); PENDING when it
        may still land and zpay knows it was sent; UNKNOWN when it may still land but the
        chain has not seen it (re-sending the recorded payload is safe)."""
        ...

    async def wait_for_transfer(
        self, reference: str, *, timeout_s: float, valid_until: int | None = None
    ) -> TransferStatus: ...

    async def balance(self, address: str, token: TokenInfo) -> int: ...

    async def sweep(
        self, *, secret: bytes, source: str, destination: str, token: TokenInfo
    ) -> ChainReceipt | None:
        """Send the whole token balance of `source` back to `destination`; None if empty."""
        ...

    async def faucet(self, address: str, token: TokenInfo, amount_base_units: int) -> ChainReceipt:
        """Local networks only; FlowNotSupported elsewhere."""
        ...

    async def maintain(self) -> None:
        """Periodic upkeep a job runs (EVM: re-broadcast, replace or fill dropped or stuck
        relayer transactions; Solana: nothing). Safe from any process."""
        ...

    async def close(self) -> None: ...
