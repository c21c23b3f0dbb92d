"""Solana chain adapter: SPL token approvals, payments and sweeps, fees paid by the platform.

The adapter only sends: transactions are built and checked by the pure functions of
`zpay.chains.solana_tx`. It talks to the chain through a small `SolanaBackend`, with two
implementations: `RpcBackend` (JSON-RPC through solana-py's AsyncClient: devnet, mainnet,
a test validator) and the embedded LiteSVM network of `zpay.chains.solana_local`. A local
network reached over RPC (a test validator) sets up its own fee payer, faucet and mints
through `zpay.chains.solana_bootstrap`.

Idempotency comes from the chain itself: a transaction's id is its fee payer signature,
known before sending, and the chain never processes the same signature twice while its
blockhash is valid (the local network remembers every signature forever). A transaction
whose blockhash has lapsed without it landing can never land.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx2
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException
from solana.rpc.jsonrpc import JsonRpcRequest, SolanaJsonRpcError
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.errors import SerdeJSONError
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.rpc.errors import (
    InvalidParamsMessage,
    RpcCustomErrorFieldless,
    SendTransactionPreflightFailureMessage,
)
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_status import (
    TransactionErrorFieldless,
    TransactionErrorType,
)

from zpay.chains import solana_tx as stx
from zpay.chains import solana_x402
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ApprovalSignatureInvalid,
    ChainError,
    ChainReceipt,
    ChainUnavailable,
    ConfirmationTimeout,
    Family,
    FlowNotSupported,
    GeneratedWallet,
    IssuedApproval,
    NetworkInfo,
    PreparedTransfer,
    TokenInfo,
    TransferFailed,
    TransferState,
    TransferStatus,
    X402Exact,
    X402Signed,
)
from zpay.chains.solana_tx import Refusal

if TYPE_CHECKING:
    from zpay.chains.registry import NetworkSpec
    from zpay.chains.solana_local import LocalChain

__all__ = [
    "APPROVAL_FORMAT",
    "RecentBlockhash",
    "RpcBackend",
    "SolanaAdapter",
    "SolanaBackend",
    "TxRejected",
]

log = logging.getLogger(__name__)

APPROVAL_FORMAT = "solana_transaction"
# A blockhash is usable for 150 blocks of ~400 ms: what a user has to sign an approval in.
_RPC_BLOCKHASH_LIFETIME_S = 60.0
_COMMITMENT_RANK = {"processed": 0, "confirmed": 1, "finalized": 2}
_EXPIRED = "expired: the blockhash lapsed before the transaction landed"
_REMEMBERED_BLOCKHASHES_MAX = 10_000

T = TypeVar("T")


# --------------------------------------------------------------------------- backend


@dataclass(frozen=True)
class RecentBlockhash:
    blockhash: Hash
    last_valid_block_height: int
    lifetime_s: float | None  # rough wall-clock validity; None = until explicitly advanced


class TxRejected(Exception):
    """The chain refused a transaction before it landed (preflight or sanitisation).

    Internal to the chain package: the adapter turns it into the ChainError family."""

    def __init__(self, err: TransactionErrorType | None, detail: str | None = None) -> None:
        self.err = err
        self.refusal = stx.classify_error(err)
        super().__init__(detail or stx.describe_error(err))


class SolanaBackend(Protocol):
    """What the adapter needs from a Solana network. Every method raises only
    `TxRejected` (send) or the ChainError family (ChainUnavailable on transport errors)."""

    poll_interval_s: float

    async def latest_blockhash(self) -> RecentBlockhash: ...

    async def is_blockhash_valid(self, blockhash: Hash) -> bool: ...

    async def block_height(self) -> int:
        """The height `last_valid_block_height` is judged against."""
        ...

    async def send(self, transaction: Transaction) -> None:
        """Submit with preflight; TxRejected when refused (nothing landed)."""
        ...

    async def signature_status(self, signature: Signature) -> TransferStatus: ...

    async def get_account(self, pubkey: Pubkey) -> Account | None: ...

    async def genesis_id(self) -> str: ...

    async def close(self) -> None: ...


class RpcBackend:
    """JSON-RPC through solana-py's AsyncClient: the production path."""

    def __init__(
        self,
        url: str,
        *,
        commitment: str = "confirmed",
        request_timeout_s: float = 10.0,
        poll_interval_s: float = 0.4,
    ) -> None:
        if commitment not in _COMMITMENT_RANK:
            raise ChainError(
                f"commitment must be one of {sorted(_COMMITMENT_RANK)}", code="invalid_config"
            )
        if not url:
            raise ChainError("no RPC URL configured for this network", code="invalid_config")
        self._commitment = Commitment(commitment)
        self._rank = _COMMITMENT_RANK[commitment]
        self._client = AsyncClient(url, commitment=self._commitment, timeout=request_timeout_s)
        self.poll_interval_s = poll_interval_s

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except RPCException as exc:
            raise ChainUnavailable(f"Solana RPC refused {what}: {_rpc_error_text(exc)}") from exc
        except (SolanaRpcException, SolanaJsonRpcError, httpx2.HTTPError, OSError) as exc:
            raise ChainUnavailable(f"Solana RPC unreachable during {what}") from exc
        except (SerdeJSONError, ValueError) as exc:
            raise ChainUnavailable(f"Solana RPC sent an unreadable answer to {what}") from exc

    async def latest_blockhash(self) -> RecentBlockhash:
        resp = await self._call(
            "getLatestBlockhash", lambda: self._client.get_latest_blockhash(self._commitment)
        )
        return RecentBlockhash(
            blockhash=resp.value.blockhash,
            last_valid_block_height=resp.value.last_valid_block_height,
            lifetime_s=_RPC_BLOCKHASH_LIFETIME_S,
        )

    async def is_blockhash_valid(self, blockhash: Hash) -> bool:
        # solana-py has no wrapper for isBlockhashValid; its generic request is public API.
        request = JsonRpcRequest(
            method="isBlockhashValid",
            params=[str(blockhash), {"commitment": str(self._commitment)}],
        )
        result = await self._call(
            "isBlockhashValid", lambda: self._client.send_rpc_request(request, dict[str, Any])
        )
        value = result.get("value")
        if not isinstance(value, bool):
            raise ChainUnavailable("Solana RPC sent an unreadable answer to isBlockhashValid")
        return value

    async def block_height(self) -> int:
        resp = await self._call(
            "getBlockHeight", lambda: self._client.get_block_height(self._commitment)
        )
        return int(resp.value)

    async def send(self, transaction: Transaction) -> None:
        opts = TxOpts(
            skip_confirmation=True,
            skip_preflight=False,
            preflight_commitment=self._commitment,
        )
        try:
            await self._client.send_raw_transaction(bytes(transaction), opts=opts)
        except RPCException as exc:
            payload = exc.args[0] if exc.args else None
            if isinstance(payload, SendTransactionPreflightFailureMessage):
                raise TxRejected(payload.data.err) from None
            if payload == RpcCustomErrorFieldless.TransactionSignatureVerificationFailure:
                raise TxRejected(TransactionErrorFieldless.SignatureFailure) from None
            if isinstance(payload, InvalidParamsMessage):
                raise TxRejected(
                    None, "the RPC node refused the transaction as malformed"
                ) from None
            raise ChainUnavailable(
                f"Solana RPC refused sendTransaction: {_rpc_error_text(exc)}"
            ) from exc
        except (SolanaRpcException, SolanaJsonRpcError, httpx2.HTTPError, OSError) as exc:
            # Ambiguous: the node may or may not have forwarded it. The signature is the
            # way to find out (transfer_status / resubmission are both safe).
            raise ChainUnavailable("Solana RPC unreachable during sendTransaction") from exc
        except (SerdeJSONError, ValueError) as exc:
            raise ChainUnavailable(
                "Solana RPC sent an unreadable answer to sendTransaction"
            ) from exc

    async def signature_status(self, signature: Signature) -> TransferStatus:
        resp = await self._call(
            "getSignatureStatuses",
            lambda: self._client.get_signature_statuses(
                [signature], search_transaction_history=True
            ),
        )
        status = resp.value[0] if resp.value else None
        tx_id = str(signature)
        if status is None:
            return TransferStatus(TransferState.UNKNOWN, tx_id)
        level = status.confirmation_status
        # No confirmation status means the slot is rooted (older nodes): finalized.
        reached = level is None or int(level) >= self._rank
        if not reached:
            return TransferStatus(TransferState.PENDING, tx_id)
        if status.err is not None:
            return TransferStatus(TransferState.FAILED, tx_id, stx.describe_error(status.err))
        return TransferStatus(TransferState.CONFIRMED, tx_id)

    async def get_account(self, pubkey: Pubkey) -> Account | None:
        resp = await self._call(
            "getAccountInfo",
            lambda: self._client.get_account_info(pubkey, self._commitment, encoding="base64"),
        )
        return resp.value

    async def genesis_id(self) -> str:
        resp = await self._call("getGenesisHash", self._client.get_genesis_hash)
        return f"genesis:{resp.value}"

    async def request_airdrop(self, pubkey: Pubkey, lamports: int) -> Signature:
        """Test validators (and devnet) only: SOL for `pubkey`; the airdrop's signature."""
        resp = await self._call(
            "requestAirdrop", lambda: self._client.request_airdrop(pubkey, lamports)
        )
        return resp.value

    async def minimum_balance_for_rent_exemption(self, size: int) -> int:
        resp = await self._call(
            "getMinimumBalanceForRentExemption",
            lambda: self._client.get_minimum_balance_for_rent_exemption(size, self._commitment),
        )
        return resp.value

    async def close(self) -> None:
        await self._client.close()


def _rpc_error_text(exc: RPCException) -> str:
    payload = exc.args[0] if exc.args else None
    message = getattr(payload, "message", None)
    return str(message) if message else type(payload).__name__


# --------------------------------------------------------------------------- adapter


class SolanaAdapter:
    """`ChainAdapter` for Solana. Build with `SolanaAdapter.local(...)`, `.local_rpc(...)`
    or `.rpc(...)`."""

    network: NetworkInfo

    def __init__(
        self,
        *,
        network: NetworkInfo,
        backend: SolanaBackend,
        fee_payer: Keypair,
        tokens: Mapping[str, TokenInfo],
        confirm_timeout_s: float = 30.0,
        local_chain: LocalChain | None = None,
        faucet_authority: Keypair | None = None,
        instance_id: str | None = None,
    ) -> None:
        if network.family is not Family.SOLANA:
            raise ChainError(f"{network.name} is not a Solana network", code="invalid_config")
        self.network = network
        self._backend = backend
        self._fee_payer = fee_payer
        # Keypair.pubkey() derives the key again on every call (~25 µs); it never changes.
        self._fee_payer_pubkey = fee_payer.pubkey()
        self._tokens = dict(tokens)
        self._confirm_timeout_s = confirm_timeout_s
        self._local = local_chain
        # A local network over RPC: the mint authority of its test tokens, and its identity.
        self._faucet_authority = faucet_authority
        self._instance_id = instance_id
        # reference -> blockhash of transfers prepared or submitted by this process, so a
        # dropped transfer can be reported FAILED (not UNKNOWN) once its blockhash lapsed.
        self._blockhash_of: OrderedDict[str, Hash] = OrderedDict()
        self._blockhash_lock = threading.Lock()  # jobs may share the adapter across threads

    # ---------------------------------------------------------------- constructors

    @classmethod
    def local(
        cls,
        spec: NetworkSpec,
        state_dir: Path | None,
        *,
        fsync: bool = True,
    ) -> SolanaAdapter:
        """The embedded LiteSVM network. `state_dir=None` keeps everything in memory."""
        from zpay.chains.solana_local import LocalBackend, LocalChain

        decimals = {symbol: t.decimals for symbol, t in spec.tokens.items()}
        chain = LocalChain(state_dir, tokens=decimals, fsync=fsync)
        tokens = {
            symbol: TokenInfo(
                symbol=symbol,
                address=chain.mint_address(symbol),
                decimals=t.decimals,
                max_base_units=stx.U64_MAX,
            )
            for symbol, t in spec.tokens.items()
        }
        return cls(
            network=spec.info,
            backend=LocalBackend(chain),
            fee_payer=chain.fee_payer,
            tokens=tokens,
            local_chain=chain,
        )

    @classmethod
    async def local_rpc(
        cls,
        spec: NetworkSpec,
        state_dir: Path,
        commitment: str = "confirmed",
        confirm_timeout_s: float = 30.0,
        *,
        request_timeout_s: float = 10.0,
        poll_interval_s: float = 0.4,
    ) -> SolanaAdapter:
        """A local network at `spec.rpc_url` (a test validator) that sets itself up like the
        embedded one: fee payer, faucet and mints created on first start, kept in
        `state_dir` (see `zpay.chains.solana_bootstrap`). The faucet works; `instance_id`
        is the validator's genesis hash."""
        from zpay.chains.solana_bootstrap import bootstrap_local_rpc

        if not spec.info.local:
            raise ChainError(
                f"{spec.info.name} is not a local network; it cannot set itself up",
                code="invalid_config",
            )
        backend = RpcBackend(
            spec.rpc_url,
            commitment=commitment,
            request_timeout_s=request_timeout_s,
            poll_interval_s=poll_interval_s,
        )
        try:
            state = await bootstrap_local_rpc(
                backend,
                state_dir,
                tokens={symbol: t.decimals for symbol, t in spec.tokens.items()},
                confirm_timeout_s=confirm_timeout_s,
            )
        except BaseException:
            await backend.close()
            raise
        tokens = {
            symbol: TokenInfo(
                symbol=symbol,
                address=str(state.mints[symbol][0]),
                decimals=t.decimals,
                max_base_units=stx.U64_MAX,
            )
            for symbol, t in spec.tokens.items()
        }
        return cls(
            network=spec.info,
            backend=backend,
            fee_payer=state.fee_payer,
            tokens=tokens,
            confirm_timeout_s=confirm_timeout_s,
            faucet_authority=state.faucet,
            instance_id=state.instance_id,
        )

    @classmethod
    def rpc(
        cls,
        spec: NetworkSpec,
        fee_payer_secret: bytes,
        commitment: str = "confirmed",
        confirm_timeout_s: float = 30.0,
        *,
        request_timeout_s: float = 10.0,
        poll_interval_s: float = 0.4,
    ) -> SolanaAdapter:
        """A JSON-RPC network (devnet, mainnet, a test validator) at `spec.rpc_url`."""
        try:
            fee_payer = stx.keypair_from_secret(fee_payer_secret)
        except ChainError:
            raise ChainError(
                "the Solana fee payer key must be a 64-byte keypair", code="invalid_config"
            ) from None
        tokens: dict[str, TokenInfo] = {}
        for symbol, t in spec.tokens.items():
            if not t.address:
                raise ChainError(
                    f"token {symbol} has no mint address on {spec.info.name}", code="invalid_config"
                )
            stx.parse_pubkey(t.address)
            tokens[symbol] = TokenInfo(
                symbol=symbol, address=t.address, decimals=t.decimals, max_base_units=stx.U64_MAX
            )
        backend = RpcBackend(
            spec.rpc_url,
            commitment=commitment,
            request_timeout_s=request_timeout_s,
            poll_interval_s=poll_interval_s,
        )
        return cls(
            network=spec.info,
            backend=backend,
            fee_payer=fee_payer,
            tokens=tokens,
            confirm_timeout_s=confirm_timeout_s,
        )

    # ---------------------------------------------------------------- extras

    @property
    def fee_payer_address(self) -> str:
        return str(self._fee_payer_pubkey)

    @property
    def local_chain(self) -> LocalChain | None:
        """The embedded chain behind a local adapter (tests and tooling), else None."""
        return self._local

    @property
    def instance_id(self) -> str | None:
        """Identity of a local chain: the embedded chain's persisted state, or the genesis
        hash of a local validator reached over RPC (None on public networks)."""
        return self._local.instance_id if self._local is not None else self._instance_id

    async def chain_instance_id(self) -> str:
        """Identity of the chain, on every backend: the embedded chain's instance id, or
        `genesis:<hash>` of an RPC cluster (a fresh test validator has a new one)."""
        if self._local is not None:
            return self._local.instance_id
        return await self._backend.genesis_id()

    def advance_blockhash(self) -> None:
        """Local network only: lapse the current blockhash (what ~60 s do on a real chain)."""
        if self._local is None:
            raise FlowNotSupported("advance_blockhash is only available on local networks")
        self._local.advance_blockhash()

    async def fee_payer_lamports(self) -> int:
        """SOL balance of the platform fee payer, for monitoring."""
        account = await self._backend.get_account(self._fee_payer_pubkey)
        return account.lamports if account is not None else 0

    # ---------------------------------------------------------------- protocol

    def token(self, symbol: str) -> TokenInfo:
        try:
            return self._tokens[symbol]
        except KeyError:
            raise ChainError(
                f"unknown token {symbol!r} on {self.network.name}", code="unknown_token"
            ) from None

    def validate_address(self, address: str) -> str:
        return str(stx.parse_pubkey(address))

    def reserved_recipients(self, session_wallet: str, token: TokenInfo) -> frozenset[str]:
        owner, mint = stx.parse_pubkey(session_wallet), stx.parse_pubkey(token.address)
        return frozenset(str(k) for k in (
            owner, stx.associated_token_address(owner, mint), mint, self._fee_payer_pubkey,
            *stx.RESERVED_PROGRAMS))

    def generate_wallet(self) -> GeneratedWallet:
        keypair = Keypair()
        return GeneratedWallet(address=str(keypair.pubkey()), secret=bytes(keypair))

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
        if method not in (None, APPROVAL_FORMAT):
            raise FlowNotSupported(f"approval method {method!r} is not supported on Solana")
        user = stx.parse_pubkey(user_wallet)
        session = stx.parse_pubkey(session_wallet)
        mint = _mint_of(token)
        stx.check_amount(amount_base_units, max_base_units=token.max_base_units)
        recent = await self._backend.latest_blockhash()
        message = stx.build_approval_message(
            fee_payer=self._fee_payer_pubkey,
            user_wallet=user,
            session_wallet=session,
            mint=mint,
            decimals=token.decimals,
            amount_base_units=amount_base_units,
            recent_blockhash=recent.blockhash,
            approval_id=approval_id,
        )
        unsigned = Transaction.new_unsigned(message)
        expires_at = (
            datetime.now(UTC) + timedelta(seconds=recent.lifetime_s)
            if recent.lifetime_s is not None
            else None
        )
        public: dict[str, Any] = {
            "format": APPROVAL_FORMAT,
            "approval_transaction": stx.b64encode(bytes(unsigned)),
            "fee_payer": str(self._fee_payer_pubkey),
            "recent_blockhash": str(recent.blockhash),
            "last_valid_block_height": recent.last_valid_block_height,
            "network": self.network.name,
            "user_wallet": str(user),
            "session_wallet": str(session),
            "session_token_account": str(stx.associated_token_address(session, mint)),
            "mint": str(mint),
            "token": token.symbol,
            "decimals": token.decimals,
            "amount_base_units": amount_base_units,
        }
        private: dict[str, Any] = {
            "format": APPROVAL_FORMAT,
            "message": stx.b64encode(bytes(message)),
            "recent_blockhash": str(recent.blockhash),
            "last_valid_block_height": recent.last_valid_block_height,
            "approval_id": approval_id,
        }
        return IssuedApproval(public=public, private=private, expires_at=expires_at)

    async def _checked_approval(
        self,
        issued: IssuedApproval,
        user_wallet: str,
        session_wallet: str,
        token: TokenInfo,
        amount_base_units: int,
        signed: Mapping[str, Any],
    ) -> tuple[Transaction, Hash, Pubkey]:
        """The user's signed approval, checked against what was issued and co-signed."""
        user = stx.parse_pubkey(user_wallet)
        session = stx.parse_pubkey(session_wallet)
        mint = _mint_of(token)
        issued_message, blockhash, approval_id = _read_issued(issued)
        # The issued approval must be the one for THIS session key and amount: rebuilding it
        # from the caller's parameters catches an approval of key B submitted for key A.
        expected = stx.build_approval_message(
            fee_payer=self._fee_payer_pubkey,
            user_wallet=user,
            session_wallet=session,
            mint=mint,
            decimals=token.decimals,
            amount_base_units=amount_base_units,
            recent_blockhash=blockhash,
            approval_id=approval_id,
        )
        if bytes(expected) != issued_message:
            raise ApprovalMismatch(
                "the issued approval does not match this wallet, token or amount"
            )
        try:
            raw = stx.b64decode_strict(signed.get("signed_transaction"))
        except ValueError:
            raise ApprovalMismatch(
                "signed_transaction must be a base64 Solana transaction"
            ) from None
        user_signed = stx.check_signed_approval(
            issued_message=issued_message, signed_transaction=raw, user_wallet=user
        )
        return stx.cosign_as_fee_payer(user_signed, self._fee_payer), blockhash, user

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
        transaction, blockhash, _user = await self._checked_approval(
            issued, user_wallet, session_wallet, token, amount_base_units, signed
        )
        signature = transaction.signatures[0]
        # Already landed (a resubmission, possibly after the blockhash lapsed)? Then it is
        # the same approval: its status will say so. Unknown and lapsed: it never can.
        status = await self._backend.signature_status(signature)
        if status.state is TransferState.UNKNOWN and not await self._backend.is_blockhash_valid(
            blockhash
        ):
            status = await self._backend.signature_status(signature)
            if status.state is TransferState.UNKNOWN:
                raise ApprovalExpired(
                    "the approval's blockhash lapsed before it was submitted; "
                    "ask the user to sign a fresh approval"
                )
        self._remember(str(signature), blockhash)
        valid_until = issued.private.get("last_valid_block_height")
        return PreparedTransfer(
            reference=str(signature),
            payload=bytes(transaction),
            valid_until=int(valid_until) if isinstance(valid_until, int) else None,
        )

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
        prepared = await self.prepare_approval(
            issued=issued,
            user_wallet=user_wallet,
            session_wallet=session_wallet,
            token=token,
            amount_base_units=amount_base_units,
            signed=signed,
        )
        transaction = Transaction.from_bytes(prepared.payload)
        signature = transaction.signatures[0]
        blockhash = transaction.message.recent_blockhash
        user = stx.parse_pubkey(user_wallet)
        receipt = ChainReceipt(tx_id=str(signature), amount_base_units=amount_base_units)
        status = await self._backend.signature_status(signature)
        if status.state is TransferState.UNKNOWN:
            try:
                await self._backend.send(transaction)
                status = TransferStatus(TransferState.PENDING, str(signature))
            except TxRejected as exc:
                status = await self._approval_rejection(exc, signature, blockhash, user)
        status = await self._settle(
            status, signature, blockhash, self._confirm_timeout_s, prepared.valid_until
        )
        if status.state is TransferState.CONFIRMED:
            return receipt
        if status.state is TransferState.FAILED:
            if status.error == _EXPIRED:
                raise ApprovalExpired("the approval's blockhash lapsed before it landed")
            raise ApprovalRejected(f"the chain refused the approval: {status.error}")
        raise ConfirmationTimeout(
            f"approval {signature} was submitted but not confirmed within "
            f"{self._confirm_timeout_s:g}s; resubmitting the same signed approval is safe"
        )

    async def _approval_rejection(
        self, exc: TxRejected, signature: Signature, blockhash: Hash, user: Pubkey
    ) -> TransferStatus:
        """Status to wait on after a refused send, or the right ChainError."""
        status = await self._backend.signature_status(signature)
        if status.state is not TransferState.UNKNOWN or exc.refusal is Refusal.ALREADY_PROCESSED:
            return status
        match exc.refusal:
            case Refusal.BLOCKHASH_NOT_FOUND:
                if await self._backend.is_blockhash_valid(blockhash):
                    raise ChainUnavailable("the RPC node has not seen the approval's blockhash yet")
                raise ApprovalExpired(
                    "the approval's blockhash lapsed; ask the user to sign a fresh approval"
                )
            case Refusal.INSUFFICIENT_TOKENS:
                raise ApprovalRejected(f"wallet {user} does not hold enough of the token ({exc})")
            case Refusal.SIGNATURE_INVALID:
                raise ApprovalSignatureInvalid("the chain refused the approval's signatures")
            case Refusal.FEE_PAYER_UNFUNDED:
                raise _fee_payer_unfunded(exc)
            case _:
                raise ApprovalRejected(f"the chain refused the approval: {exc}")

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
        # keypair_from_secret checks the secret's key is exactly `source`: the parsed
        # address is the owner's public key, no need to derive it from the keypair again.
        owner_pubkey = stx.parse_pubkey(source)
        owner = stx.keypair_from_secret(secret, expected_address=source)
        destination_owner = stx.parse_pubkey(destination)
        mint = _mint_of(token)
        stx.check_amount(amount_base_units, max_base_units=token.max_base_units)
        recent = await self._backend.latest_blockhash()
        if close_source:
            # The whole balance back, then the token account closed (its rent back to the
            # fee payer); closing fails on chain if anything would be left behind.
            transaction = stx.build_sweep(
                fee_payer=self._fee_payer,
                owner=owner,
                destination_owner=destination_owner,
                mint=mint,
                decimals=token.decimals,
                amount_base_units=amount_base_units,
                recent_blockhash=recent.blockhash,
                fee_payer_pubkey=self._fee_payer_pubkey,
                owner_pubkey=owner_pubkey,
            )
        else:
            transaction = stx.build_transfer(
                fee_payer=self._fee_payer,
                owner=owner,
                destination_owner=destination_owner,
                mint=mint,
                decimals=token.decimals,
                amount_base_units=amount_base_units,
                recent_blockhash=recent.blockhash,
                reference_seed=reference_seed,
                fee_payer_pubkey=self._fee_payer_pubkey,
                owner_pubkey=owner_pubkey,
            )
        reference = str(transaction.signatures[0])
        self._remember(reference, recent.blockhash)
        return PreparedTransfer(
            reference=reference,
            payload=bytes(transaction),
            valid_until=recent.last_valid_block_height,
            extra={
                "recent_blockhash": str(recent.blockhash),
                "last_valid_block_height": recent.last_valid_block_height,
                "memo": stx.payment_memo(reference_seed),
            },
        )

    async def sign_x402_exact(
        self,
        *,
        secret: bytes,
        source: str,
        token: TokenInfo,
        exact: X402Exact,
        reference_seed: str,
    ) -> X402Signed:
        """x402 `exact` (solana_x402): partially signed, the facilitator's `extra.feePayer`
        pays the fee. Followed by the session wallet's signature, which only the embedded
        network answers for yet (an RPC node finds a transaction by its first signature,
        the facilitator's): elsewhere FlowNotSupported."""
        if self.local_chain is None:
            raise FlowNotSupported("x402 payments on Solana are supported on solana-local only")
        owner = stx.keypair_from_secret(secret, expected_address=source)
        mint = _mint_of(token)
        if exact.asset != str(mint):
            raise ChainError("the requirement's asset is not the session key's token",
                             code="x402_domain_mismatch")
        fee_payer_text = exact.extra.get("feePayer")
        if not isinstance(fee_payer_text, str):
            raise solana_x402.X402FeePayerInvalid("extra.feePayer is required on Solana")
        fee_payer = stx.parse_pubkey(fee_payer_text)
        if fee_payer == self._fee_payer_pubkey:
            raise solana_x402.X402FeePayerInvalid("extra.feePayer is zpay's own fee payer")
        recent = await self._backend.latest_blockhash()
        signed = solana_x402.build_exact(
            owner=owner, fee_payer=fee_payer, pay_to=stx.parse_pubkey(exact.pay_to), mint=mint,
            decimals=token.decimals, amount_base_units=exact.amount_base_units,
            memo=solana_x402.x402_memo(reference_seed, exact.extra.get("memo")),
            recent_blockhash=recent.blockhash)
        reference = str(signed.session_signature)
        self._remember(reference, recent.blockhash)
        return X402Signed(
            payload={"transaction": stx.b64encode(signed.wire)},
            prepared=PreparedTransfer(
                reference=reference, payload=signed.wire,
                valid_until=recent.last_valid_block_height,
                extra={"recent_blockhash": str(recent.blockhash), "fee_payer": str(fee_payer),
                       "last_valid_block_height": recent.last_valid_block_height}))

    async def submit_transfer(self, prepared: PreparedTransfer) -> None:
        try:
            transaction = Transaction.from_bytes(prepared.payload)
        except ValueError:
            raise ChainError(
                "prepared transfer payload is not a transaction", code="invalid_payload"
            ) from None
        signature = transaction.signatures[0]
        if str(signature) != prepared.reference:
            raise ChainError(
                "prepared transfer payload does not match its reference", code="invalid_payload"
            )
        blockhash = transaction.message.recent_blockhash
        self._remember(prepared.reference, blockhash)
        try:
            await self._backend.send(transaction)
        except TxRejected as exc:
            status = await self._backend.signature_status(signature)
            if status.state in (TransferState.CONFIRMED, TransferState.PENDING):
                return
            if status.state is TransferState.FAILED:
                raise TransferFailed(f"transfer {signature} failed: {status.error}") from None
            if exc.refusal is Refusal.ALREADY_PROCESSED:
                return
            raise await self._transfer_error(exc, signature, blockhash) from None

    async def _transfer_error(
        self, exc: TxRejected, signature: Signature, blockhash: Hash
    ) -> ChainError:
        match exc.refusal:
            case Refusal.BLOCKHASH_NOT_FOUND:
                if await self._backend.is_blockhash_valid(blockhash):
                    return ChainUnavailable("the RPC node has not seen the blockhash yet; retry")
                # Blockhash checked lapsed before the status lookup: it can never land now.
                status = await self._backend.signature_status(signature)
                if status.state is TransferState.UNKNOWN:
                    return TransferFailed(f"transfer {signature} {_EXPIRED}")
                if status.state is TransferState.FAILED:
                    return TransferFailed(f"transfer {signature} failed: {status.error}")
                return ChainUnavailable(
                    f"transfer {signature} is already on chain; poll its status"
                )
            case Refusal.INSUFFICIENT_TOKENS:
                return TransferFailed(
                    f"the session wallet does not hold enough of the token ({exc})"
                )
            case Refusal.FEE_PAYER_UNFUNDED:
                return _fee_payer_unfunded(exc)
            case _:
                return TransferFailed(f"the chain refused transfer {signature}: {exc}")

    async def transfer_status(
        self, reference: str, *, valid_until: int | None = None
    ) -> TransferStatus:
        signature = _parse_reference(reference)
        status = await self._backend.signature_status(signature)
        if status.state is TransferState.UNKNOWN:
            status = await self._expired_if_lapsed(
                status, signature, self._remembered(reference), valid_until
            )
        return status

    async def wait_for_transfer(
        self, reference: str, *, timeout_s: float, valid_until: int | None = None
    ) -> TransferStatus:
        signature = _parse_reference(reference)
        status = await self._backend.signature_status(signature)
        return await self._settle(
            status, signature, self._remembered(reference), timeout_s, valid_until
        )

    async def balance(self, address: str, token: TokenInfo) -> int:
        owner = stx.parse_pubkey(address)
        mint = _mint_of(token)
        return await self._token_balance(owner, mint)

    async def sweep(
        self, *, secret: bytes, source: str, destination: str, token: TokenInfo
    ) -> ChainReceipt | None:
        # As in prepare_transfer: the checked `source` is the owner's public key.
        owner_pubkey = stx.parse_pubkey(source)
        owner = stx.keypair_from_secret(secret, expected_address=source)
        destination_owner = stx.parse_pubkey(destination)
        mint = _mint_of(token)
        account = await self._backend.get_account(stx.associated_token_address(owner_pubkey, mint))
        if account is None:
            return None
        state = stx.parse_token_account(account.data, program_owner=account.owner)
        if state is None or state.mint != mint or state.owner != owner_pubkey:
            return None
        recent = await self._backend.latest_blockhash()
        transaction = stx.build_sweep(
            fee_payer=self._fee_payer,
            owner=owner,
            destination_owner=destination_owner,
            mint=mint,
            decimals=token.decimals,
            amount_base_units=state.amount,
            recent_blockhash=recent.blockhash,
            fee_payer_pubkey=self._fee_payer_pubkey,
            owner_pubkey=owner_pubkey,
        )
        signature = transaction.signatures[0]
        self._remember(str(signature), recent.blockhash)
        status = TransferStatus(TransferState.PENDING, str(signature))
        try:
            await self._backend.send(transaction)
        except TxRejected as exc:
            status = await self._backend.signature_status(signature)
            if (
                status.state is TransferState.UNKNOWN
                and exc.refusal is not Refusal.ALREADY_PROCESSED
            ):
                raise await self._transfer_error(exc, signature, recent.blockhash) from None
        status = await self._settle(status, signature, recent.blockhash, self._confirm_timeout_s)
        if status.state is TransferState.FAILED:
            raise TransferFailed(f"sweep {signature} failed: {status.error}")
        if status.state is not TransferState.CONFIRMED:
            raise ConfirmationTimeout(
                f"sweep {signature} not confirmed within {self._confirm_timeout_s:g}s; "
                "sweeping again is safe"
            )
        if state.amount == 0:
            return None
        return ChainReceipt(tx_id=str(signature), amount_base_units=state.amount)

    async def faucet(self, address: str, token: TokenInfo, amount_base_units: int) -> ChainReceipt:
        if not self.network.local or (self._local is None and self._faucet_authority is None):
            raise FlowNotSupported(
                f"the faucet is only available on local networks, not {self.network.name}"
            )
        owner = stx.parse_pubkey(address)
        mint = _mint_of(token)
        stx.check_amount(amount_base_units, max_base_units=token.max_base_units)
        if self._local is not None:
            tx_id = self._local.faucet_mint(owner, mint, amount_base_units)
            return ChainReceipt(tx_id=tx_id, amount_base_units=amount_base_units)
        assert self._faucet_authority is not None
        if all(t.address != token.address for t in self._tokens.values()):
            raise ChainError(f"{mint} is not a mint of {self.network.name}", code="unknown_token")
        recent = await self._backend.latest_blockhash()
        transaction = stx.build_faucet_mint(
            fee_payer=self._fee_payer,
            mint_authority=self._faucet_authority,
            owner=owner,
            mint=mint,
            decimals=token.decimals,
            amount_base_units=amount_base_units,
            recent_blockhash=recent.blockhash,
            nonce=uuid.uuid4().hex,  # two identical faucet calls must both mint
        )
        signature = transaction.signatures[0]
        try:
            await self._backend.send(transaction)
        except TxRejected as exc:
            if exc.refusal is Refusal.FEE_PAYER_UNFUNDED:
                raise _fee_payer_unfunded(exc) from None
            raise ChainError(f"faucet refused: {exc}", code="faucet_failed") from None
        status = await self._settle(
            TransferStatus(TransferState.PENDING, str(signature)),
            signature,
            recent.blockhash,
            self._confirm_timeout_s,
        )
        if status.state is TransferState.FAILED:
            raise ChainError(
                f"faucet mint {signature} failed: {status.error}", code="faucet_failed"
            )
        if status.state is not TransferState.CONFIRMED:
            raise ConfirmationTimeout(
                f"faucet mint {signature} not confirmed within {self._confirm_timeout_s:g}s"
            )
        return ChainReceipt(tx_id=str(signature), amount_base_units=amount_base_units)

    async def maintain(self) -> None:
        """Nothing to upkeep: the fee payer signs each transfer itself."""

    async def close(self) -> None:
        await self._backend.close()

    # ---------------------------------------------------------------- internals

    async def _token_balance(self, owner: Pubkey, mint: Pubkey) -> int:
        account = await self._backend.get_account(stx.associated_token_address(owner, mint))
        if account is None:
            return 0
        state = stx.parse_token_account(account.data, program_owner=account.owner)
        if state is None or state.mint != mint or state.owner != owner:
            return 0
        return state.amount

    def _remember(self, reference: str, blockhash: Hash) -> None:
        with self._blockhash_lock:
            self._blockhash_of[reference] = blockhash
            self._blockhash_of.move_to_end(reference)
            while len(self._blockhash_of) > _REMEMBERED_BLOCKHASHES_MAX:
                self._blockhash_of.popitem(last=False)

    def _remembered(self, reference: str) -> Hash | None:
        with self._blockhash_lock:
            return self._blockhash_of.get(reference)

    async def _expired_if_lapsed(
        self,
        status: TransferStatus,
        signature: Signature,
        blockhash: Hash | None,
        valid_until: int | None = None,
    ) -> TransferStatus:
        """UNKNOWN becomes FAILED(expired) when the chain shows the transfer's validity
        lapsed: the block height passed its `valid_until` (the recorded last valid block
        height: any process can judge it) or, failing that, its blockhash is no longer
        valid. Checked BEFORE the second status lookup: once lapsed nothing new can land,
        so a signature still unknown afterwards is gone for good."""
        lapsed = valid_until is not None and await self._backend.block_height() > valid_until
        if not lapsed and (blockhash is None or await self._backend.is_blockhash_valid(blockhash)):
            return status
        status = await self._backend.signature_status(signature)
        if status.state is TransferState.UNKNOWN:
            return TransferStatus(TransferState.FAILED, str(signature), _EXPIRED)
        return status

    async def _settle(
        self,
        status: TransferStatus,
        signature: Signature,
        blockhash: Hash | None,
        timeout_s: float,
        valid_until: int | None = None,
    ) -> TransferStatus:
        """Poll until CONFIRMED or FAILED, or the timeout; returns the last status seen."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
                return status
            if status.state is TransferState.UNKNOWN:
                status = await self._expired_if_lapsed(status, signature, blockhash, valid_until)
                if status.state is TransferState.FAILED:
                    return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return status
            await asyncio.sleep(min(self._backend.poll_interval_s, remaining))
            status = await self._backend.signature_status(signature)


def _mint_of(token: TokenInfo) -> Pubkey:
    try:
        return stx.parse_pubkey(token.address)
    except ChainError:
        raise ChainError(
            f"token {token.symbol} has no valid mint address", code="unknown_token"
        ) from None


def _parse_reference(reference: str) -> Signature:
    try:
        return Signature.from_string(reference)
    except ValueError:
        raise ChainError(
            f"not a Solana transaction signature: {reference!r}", code="invalid_reference"
        ) from None


def _read_issued(issued: IssuedApproval) -> tuple[bytes, Hash, str]:
    private = issued.private
    try:
        if private.get("format") != APPROVAL_FORMAT:
            raise ValueError("format")
        message = stx.b64decode_strict(private["message"])
        blockhash = Hash.from_string(str(private["recent_blockhash"]))
        approval_id = str(private["approval_id"])
    except (KeyError, ValueError):
        raise ApprovalMismatch("the issued approval is not a Solana approval") from None
    return message, blockhash, approval_id


def _fee_payer_unfunded(exc: TxRejected) -> ChainUnavailable:
    log.error("Solana fee payer cannot pay fees or rent: %s", exc)
    return ChainUnavailable(
        "the platform fee payer cannot pay the network fees; fund it and retry",
        code="fee_payer_unfunded",
    )
