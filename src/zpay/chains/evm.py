"""EVM chain family (anvil, Base, Arbitrum, Ethereum) behind the `ChainAdapter` protocol.

Fees are zpay's: a platform RELAYER account (holds ETH) submits every token movement as an
EIP-3009 `transferWithAuthorization` signed by whoever owns the funds — the user for a
funding approval, the session wallet for payments and sweeps — so session wallets never
hold gas. What gets signed and how it is checked is built in `evm_tx` (pure); this module
only talks to the node. web3 types and errors never leave it: they become `ChainError`s.

The relayer (its nonce counter, re-broadcast and replacement of dropped or stuck
transactions) is `evm_relayer`; setting up a local network (anvil, the test token, the
relayer key file) is `evm_local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    ContractLogicError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)

from zpay.chains import evm_tx
from zpay.chains.anvil import AnvilProcess
from zpay.chains.evm_local import (
    check_chain_id,
    deploy_test_tokens,
    fund_relayer,
    load_or_create_key,
    start_anvil,
)
from zpay.chains.evm_local import (
    load_test_token_artifact as load_test_token_artifact,  # re-exported: public here before
)
from zpay.chains.evm_relayer import (
    KNOWN_ERRORS,
    NONCE_ERRORS,
    Relayer,
    decode_key,
    rpc_message,
    to_hex,
    translated,
    with_headroom,
)
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ChainError,
    ChainReceipt,
    ChainUnavailable,
    ConfirmationTimeout,
    Family,
    FlowNotSupported,
    GeneratedWallet,
    InvalidAddress,
    IssuedApproval,
    NetworkInfo,
    PreparedTransfer,
    TokenInfo,
    TransferFailed,
    TransferState,
    TransferStatus,
)
from zpay.chains.registry import NetworkSpec

log = logging.getLogger(__name__)

METHOD_EIP3009 = "eip3009"
METHOD_TRANSACTION = "transaction"
FORMAT_EIP712 = "eip712"
FORMAT_EVM_TRANSACTION = "evm_transaction"
PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class EvmOptions:
    """Timing knobs. Defaults suit public networks; `local()` tightens the polling."""

    approval_ttl_s: int = 3600  # how long the user has to sign a funding approval
    payment_validity_s: int = 900  # validBefore of payments/sweeps: bounds a stuck tx
    expiry_margin_s: int = 10  # refuse to submit what would expire before inclusion
    confirm_timeout_s: float = 120.0
    poll_interval_s: float = 1.0
    heal_interval_s: float = 5.0  # how often a wait checks for dropped relayer txs
    stuck_after_s: float = 90.0  # an unmined head-of-queue relayer tx gets higher fees
    request_timeout_s: float = 30.0
    log_lookback_blocks: int = 5000  # tx-id lookup after a restart (public RPC caps ranges)
    gas_headroom_percent: int = 25
    relayer_min_balance_wei: int = 10**20  # local networks top the relayer up to this


def _local_options(options: EvmOptions | None) -> EvmOptions:
    if options is not None:
        return options
    return EvmOptions(
        confirm_timeout_s=30.0,
        poll_interval_s=0.05,
        heal_interval_s=0.5,
        stuck_after_s=5.0,
        expiry_margin_s=2,
    )


# ------------------------------------------------------------------------- adapter


class EvmAdapter:
    """`ChainAdapter` for one EVM network. Build it with `local`, `rpc`, `embedded` or
    `open`; never directly."""

    def __init__(
        self,
        *,
        spec: NetworkSpec,
        rpc_url: str,
        relayer_secret: bytes,
        options: EvmOptions,
        token_addresses: Mapping[str, str] | None = None,
        anvil: AnvilProcess | None = None,
    ) -> None:
        if spec.info.family is not Family.EVM or spec.info.chain_id is None:
            raise ChainError(f"{spec.info.name} is not an EVM network with a chain id")
        if not rpc_url:
            raise ChainUnavailable(f"no RPC URL for {spec.info.name}")
        self.network: NetworkInfo = spec.info
        self.chain_id: int = spec.info.chain_id
        self._options = options
        self._anvil = anvil
        self._w3 = AsyncWeb3(
            AsyncHTTPProvider(
                rpc_url,
                request_kwargs={"timeout": aiohttp.ClientTimeout(total=options.request_timeout_s)},
            )
        )
        if evm_tx.ecc_backend_name() != "CoinCurveECCBackend":
            log.warning("eth-keys is not using coincurve: EVM signing will be slow")
        self._relayer = Relayer(self, relayer_secret)
        self._tokens: dict[str, TokenInfo] = {}
        overrides = dict(token_addresses or {})
        for symbol, t in spec.tokens.items():
            address = overrides.get(symbol, t.address)
            if address and not evm_tx.is_native(address):
                address = evm_tx.checksum(address)
            self._tokens[symbol] = TokenInfo(
                symbol=symbol,
                address=address,
                decimals=t.decimals,
                max_base_units=evm_tx.UINT256_MAX,
                eip712_name=t.eip712_name,
                eip712_version=t.eip712_version,
            )
        # Relayer txs per authorization ("<from>:<nonce>"), so status can follow them and
        # a repeated submit does not pay gas twice. Bounded: after a restart (or eviction)
        # the chain's authorizationState is the source of truth anyway.
        self._submissions: OrderedDict[str, list[str]] = OrderedDict()
        self._last_heal = 0.0

    # ------------------------------------------------------------------ factories

    @classmethod
    def rpc(
        cls,
        spec: NetworkSpec,
        relayer_secret: bytes,
        *,
        rpc_url: str | None = None,
        options: EvmOptions | None = None,
    ) -> EvmAdapter:
        """A public network (or any node) at `rpc_url` / the registry's RPC URL."""
        for t in spec.tokens.values():
            if not t.address:
                raise ChainError(f"{spec.info.name}: token {t.symbol} has no address")
        return cls(
            spec=spec,
            rpc_url=rpc_url or spec.rpc_url,
            relayer_secret=relayer_secret,
            options=options or EvmOptions(),
        )

    @classmethod
    async def local(
        cls,
        spec: NetworkSpec,
        anvil_rpc_url: str,
        relayer_secret: bytes,
        *,
        options: EvmOptions | None = None,
        _anvil: AnvilProcess | None = None,
    ) -> EvmAdapter:
        """A local anvil at `anvil_rpc_url`: tops the relayer up with ETH and deploys the
        test token for every token the registry leaves without an address."""
        if not spec.info.local:
            raise FlowNotSupported(f"{spec.info.name} is not a local network")
        adapter = cls(
            spec=spec,
            rpc_url=anvil_rpc_url,
            relayer_secret=relayer_secret,
            options=_local_options(options),
            anvil=_anvil,
        )
        try:
            await check_chain_id(adapter)
            await fund_relayer(adapter)
            await deploy_test_tokens(adapter)
            await adapter.verify_tokens()
        except BaseException:
            await adapter.close()
            raise
        return adapter

    @classmethod
    async def embedded(
        cls,
        spec: NetworkSpec,
        relayer_secret: bytes,
        *,
        state_path: Path | None = None,
        options: EvmOptions | None = None,
    ) -> EvmAdapter:
        """Start anvil (owned by the adapter: close() stops it) and connect `local`.
        With `state_path`, the chain survives restarts like the database does."""
        assert spec.info.chain_id is not None
        anvil = await start_anvil(spec.info.chain_id, state_path)
        try:
            return await cls.local(
                spec, anvil.rpc_url, relayer_secret, options=options, _anvil=anvil
            )
        except BaseException:
            await anvil.stop_async()
            raise

    @classmethod
    async def open(
        cls,
        spec: NetworkSpec,
        relayer_secret: bytes | str | None,
        *,
        state_dir: Path | None = None,
        options: EvmOptions | None = None,
    ) -> EvmAdapter:
        """What zpay uses: a local network without an RPC URL gets an embedded anvil
        (state and, if none is given, a generated relayer key kept in `state_dir`); a
        local one with a URL is `local`; anything else is `rpc` (key required). The key
        is 32 raw bytes or their 0x-hex (ZPAY_EVM_RELAYER_KEY); "" counts as none."""
        if isinstance(relayer_secret, str):
            relayer_secret = decode_key(relayer_secret) if relayer_secret.strip() else None
        if spec.info.local:
            if relayer_secret is None:
                if state_dir is None:
                    raise ChainError("a local EVM network needs a relayer key or a state_dir")
                relayer_secret = load_or_create_key(state_dir / "relayer.key")
            if not spec.rpc_url:
                state_path = None
                if state_dir is not None:
                    state_dir.mkdir(parents=True, exist_ok=True)
                    state_path = state_dir / "anvil-state.json"
                return await cls.embedded(
                    spec, relayer_secret, state_path=state_path, options=options
                )
            return await cls.local(spec, spec.rpc_url, relayer_secret, options=options)
        if relayer_secret is None:
            raise ChainError(f"{spec.info.name} needs a relayer key (ZPAY_EVM_RELAYER_KEY)")
        adapter = cls.rpc(spec, relayer_secret, options=options)
        return adapter

    # ------------------------------------------------------------ small extras

    @property
    def relayer_address(self) -> str:
        return self._relayer.address

    @property
    def rpc_url(self) -> str:
        return str(cast(AsyncHTTPProvider, self._w3.provider).endpoint_uri)

    def native_token(self) -> TokenInfo:
        """ETH as a token (address "native"): for the fallback approval and the faucet."""
        return TokenInfo(
            symbol="ETH",
            address=evm_tx.NATIVE_ASSET,
            decimals=18,
            max_base_units=evm_tx.UINT256_MAX,
        )

    async def relayer_balance_wei(self) -> int:
        with translated("relayer balance"):
            return int(await self._w3.eth.get_balance(cast(Any, self._relayer.address)))

    async def verify_tokens(self) -> None:
        """Check that each EIP-3009 token's on-chain DOMAIN_SEPARATOR() is the one the
        registry's eip712_name/version produce: a wrong name would make every user
        signature fail on chain; better to fail at start."""
        for token in self._tokens.values():
            if not self._supports_eip3009(token):
                continue
            expected = self._domain(token).separator()
            actual = await self._call(token.address, evm_tx.SELECTOR_DOMAIN_SEPARATOR)
            if actual != expected:
                raise ChainError(
                    f"{self.network.name}: {token.symbol} EIP-712 domain mismatch: the registry "
                    f"says name={token.eip712_name!r} version={token.eip712_version!r}",
                    code="token_domain_mismatch",
                )

    async def resync_relayer(self) -> None:
        """Re-broadcast dropped relayer transactions and re-read the nonce (for jobs)."""
        await self._relayer.heal()

    # ----------------------------------------------------------------- protocol

    def token(self, symbol: str) -> TokenInfo:
        try:
            token = self._tokens[symbol]
        except KeyError:
            raise ChainError(
                f"{self.network.name} has no token {symbol!r}", code="unknown_token"
            ) from None
        if not token.address:
            raise ChainError(
                f"{symbol} is not deployed on {self.network.name}", code="unknown_token"
            )
        return token

    def validate_address(self, address: str) -> str:
        canonical = evm_tx.checksum(address)
        if canonical == evm_tx.ZERO_ADDRESS:
            raise InvalidAddress("the zero address cannot hold or receive funds")
        return canonical

    def generate_wallet(self) -> GeneratedWallet:
        secret = evm_tx.new_private_key()
        return GeneratedWallet(address=evm_tx.address_of(secret), secret=secret)

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
        token = self._own_token(token)
        user = self.validate_address(user_wallet)
        session = self.validate_address(session_wallet)
        evm_tx.require_amount(amount_base_units)
        if evm_tx.same_address(user, session):
            raise ApprovalMismatch("the session wallet must differ from the user wallet")
        chosen = method or (METHOD_EIP3009 if self._supports_eip3009(token) else METHOD_TRANSACTION)
        issued_block = await self._block_number()
        common = {
            "network": self.network.name,
            "chain_id": self.chain_id,
            "token": token.address,
            "token_symbol": token.symbol,
            "user_wallet": user,
            "session_wallet": session,
            "amount": str(amount_base_units),
            "issued_block": issued_block,
        }
        if chosen == METHOD_EIP3009:
            if not self._supports_eip3009(token):
                raise FlowNotSupported(f"{token.symbol} on {self.network.name} has no EIP-3009")
            valid_before = await self._chain_now_s() + self._options.approval_ttl_s
            auth = evm_tx.Authorization(
                from_address=user,
                to=session,
                value=amount_base_units,
                valid_after=0,
                valid_before=valid_before,
                nonce=evm_tx.approval_nonce(approval_id),
            )
            typed = evm_tx.typed_data(self._domain(token), auth)
            return IssuedApproval(
                public={
                    "format": FORMAT_EIP712,
                    "method": METHOD_EIP3009,
                    "chain_id": self.chain_id,
                    "typed_data": typed,
                },
                private={
                    **common,
                    "format": FORMAT_EIP712,
                    "domain": typed["domain"],
                    "authorization": auth.to_json(),
                },
                expires_at=datetime.fromtimestamp(valid_before, UTC),
            )
        if chosen == METHOD_TRANSACTION:
            with translated("read user nonce"):
                user_nonce = int(
                    await self._w3.eth.get_transaction_count(cast(Any, user), "pending")
                )
            max_fee, priority_fee = await self._fees()
            unsigned = evm_tx.build_funding_transaction(
                chain_id=self.chain_id,
                token_address=token.address,
                user_wallet=user,
                session_wallet=session,
                amount_base_units=amount_base_units,
                nonce=user_nonce,
                max_fee_per_gas=max_fee,
                max_priority_fee_per_gas=priority_fee,
            )
            unsigned = replace(unsigned, gas=await self._estimate_user_gas(unsigned))
            return IssuedApproval(
                public={
                    "format": FORMAT_EVM_TRANSACTION,
                    "method": METHOD_TRANSACTION,
                    "chain_id": self.chain_id,
                    "unsigned_transaction": unsigned.to_json(),
                },
                private={
                    **common,
                    "format": FORMAT_EVM_TRANSACTION,
                    "unsigned_transaction": unsigned.to_json(),
                },
                # Valid until the user's account nonce moves past it (not a time).
                expires_at=None,
            )
        raise FlowNotSupported(
            f"approval method {method!r} is not supported on EVM "
            f"(use {METHOD_EIP3009!r} or {METHOD_TRANSACTION!r})"
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
        token = self._own_token(token)
        private = issued.private
        user = self.validate_address(user_wallet)
        session = self.validate_address(session_wallet)
        # The call must describe the approval that was issued: a mix-up between two
        # approvals is refused before anything is looked at on chain.
        if private.get("network") != self.network.name or private.get("chain_id") != self.chain_id:
            raise ApprovalMismatch("the approval was issued for another chain")
        if not evm_tx.same_address(str(private.get("token", "")), token.address):
            raise ApprovalMismatch("the approval was issued for another token contract")
        if not evm_tx.same_address(str(private.get("user_wallet", "")), user):
            raise ApprovalMismatch("the approval was issued for another user wallet")
        if not evm_tx.same_address(str(private.get("session_wallet", "")), session):
            raise ApprovalMismatch("the approval was issued for another session wallet")
        if private.get("amount") != str(amount_base_units):
            raise ApprovalMismatch("the approval was issued for another amount")
        if not isinstance(signed, Mapping):
            raise ApprovalMismatch("signed must be an object")
        if private.get("format") == FORMAT_EIP712:
            return await self._submit_eip712_approval(private, user, session, token, signed)
        if private.get("format") == FORMAT_EVM_TRANSACTION:
            return await self._submit_transaction_approval(private, user, session, token, signed)
        raise ApprovalMismatch("unknown approval format")

    async def prepare_transfer(
        self,
        *,
        secret: bytes,
        source: str,
        destination: str,
        token: TokenInfo,
        amount_base_units: int,
        reference_seed: str,
    ) -> PreparedTransfer:
        token = self._own_token(token)
        self._require_eip3009(token)
        evm_tx.require_amount(amount_base_units)
        source = self.validate_address(source)
        destination = self.validate_address(destination)
        if not evm_tx.same_address(evm_tx.address_of(secret), source):
            raise ChainError("the secret does not belong to the source wallet")
        valid_before = await self._chain_now_s() + self._options.payment_validity_s
        auth = evm_tx.Authorization(
            from_address=source,
            to=destination,
            value=amount_base_units,
            valid_after=0,
            valid_before=valid_before,
            nonce=evm_tx.payment_nonce(reference_seed),
        )
        return self._prepared(secret, token, auth)

    async def submit_transfer(self, prepared: PreparedTransfer) -> None:
        token, signed = self._decode_prepared(prepared)
        await self._relay_authorization(token, signed, failure=TransferFailed)

    async def transfer_status(self, reference: str) -> TransferStatus:
        from_address, nonce, valid_before = _parse_reference(reference)
        key = _authorization_key(from_address, nonce)
        head = await self._block_number()
        for token in self._tokens.values():
            if not self._supports_eip3009(token) or not token.address:
                continue
            if not await self._authorization_used(token, from_address, nonce, "latest"):
                continue
            tx_id = await self._settling_tx(token, key, from_address, nonce)
            deep_block = head - self.network.confirmations + 1
            # Used already at the block `confirmations` deep: that many blocks carry it.
            if deep_block >= 0 and await self._authorization_used(
                token, from_address, nonce, deep_block
            ):
                self._submissions.pop(key, None)
                return TransferStatus(TransferState.CONFIRMED, tx_id=tx_id)
            return TransferStatus(TransferState.PENDING, tx_id=tx_id)

        if await self._latest_block_time_s() >= valid_before:
            # Block timestamps only grow: once the chain itself is past validBefore, an
            # unused authorization can never execute, whatever is still in some mempool.
            # (Not the wall clock: a block stamped a little earlier may still arrive.)
            self._submissions.pop(key, None)
            return TransferStatus(
                TransferState.FAILED, error="authorization expired without being executed"
            )
        hashes = list(self._submissions.get(key, ()))
        if not hashes:
            return TransferStatus(TransferState.UNKNOWN)
        unsettled: str | None = None
        for tx_hash in hashes:
            receipt = await self._receipt(tx_hash)
            if receipt is None:
                # In the mempool, or dropped and about to be re-broadcast by heal():
                # either way it may still execute, so this is not a failure yet.
                unsettled = tx_hash
                if not await self._tx_known(tx_hash):
                    await self._maybe_heal(force=True)
        if unsettled is not None:
            return TransferStatus(TransferState.PENDING, tx_id=unsettled)
        # Every relayer tx for it was mined and reverted: nothing moved, and nothing
        # will unless the same transfer is submitted again.
        return TransferStatus(
            TransferState.FAILED, tx_id=hashes[-1], error="the relayer transaction reverted"
        )

    async def wait_for_transfer(self, reference: str, *, timeout_s: float) -> TransferStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.transfer_status(reference)
            if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
                return status
            if time.monotonic() >= deadline:
                return status
            await self._maybe_heal()
            await asyncio.sleep(self._options.poll_interval_s)

    async def balance(self, address: str, token: TokenInfo) -> int:
        token = self._own_token(token)
        address = self.validate_address(address)
        if evm_tx.is_native(token.address):
            with translated("read balance"):
                return int(await self._w3.eth.get_balance(cast(Any, address)))
        return evm_tx.decode_uint(
            await self._call(token.address, evm_tx.encode_balance_of(address))
        )

    async def sweep(
        self, *, secret: bytes, source: str, destination: str, token: TokenInfo
    ) -> ChainReceipt | None:
        token = self._own_token(token)
        self._require_eip3009(token)
        source = self.validate_address(source)
        destination = self.validate_address(destination)
        if not evm_tx.same_address(evm_tx.address_of(secret), source):
            raise ChainError("the secret does not belong to the source wallet")
        remaining = await self.balance(source, token)
        if remaining == 0:
            return None
        # A random nonce is safe here: a sweep only ever moves the wallet's own balance
        # to the user, so a repeated sweep can at most find nothing left.
        auth = evm_tx.Authorization(
            from_address=source,
            to=destination,
            value=remaining,
            valid_after=0,
            valid_before=await self._chain_now_s() + self._options.payment_validity_s,
            nonce=evm_tx.random_nonce(),
        )
        prepared = self._prepared(secret, token, auth)
        await self.submit_transfer(prepared)
        status = await self.wait_for_transfer(
            prepared.reference, timeout_s=self._options.confirm_timeout_s
        )
        if status.state is TransferState.CONFIRMED:
            return ChainReceipt(tx_id=status.tx_id or "", amount_base_units=remaining)
        if status.state is TransferState.FAILED:
            raise TransferFailed(f"sweep failed: {status.error}")
        raise ConfirmationTimeout(f"sweep {prepared.reference} not confirmed yet")

    async def faucet(self, address: str, token: TokenInfo, amount_base_units: int) -> ChainReceipt:
        if not self.network.local:
            raise FlowNotSupported(f"no faucet on {self.network.name}")
        address = self.validate_address(address)
        evm_tx.require_amount(amount_base_units)
        if evm_tx.is_native(token.address):
            sent = await self._relayer.send(
                to=address, data=b"", gas=evm_tx.NATIVE_TRANSFER_GAS, value=amount_base_units
            )
        else:
            token = self._own_token(token)
            data = evm_tx.encode_mint(address, amount_base_units)
            gas = await self._estimate(self._relayer.address, token.address, data)
            sent = await self._relayer.send(to=token.address, data=data, gas=gas)
        receipt = await self._wait_receipt(sent.tx_hash, relayer=True)
        if receipt["status"] != 1:
            raise TransferFailed("faucet transaction reverted")
        return ChainReceipt(tx_id=sent.tx_hash, amount_base_units=amount_base_units)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await cast(AsyncHTTPProvider, self._w3.provider).disconnect()
        if self._anvil is not None:
            await self._anvil.stop_async()
            self._anvil = None

    # ----------------------------------------------------------- approvals (impl)

    async def _submit_eip712_approval(
        self,
        private: Mapping[str, Any],
        user: str,
        session: str,
        token: TokenInfo,
        signed: Mapping[str, Any],
    ) -> ChainReceipt:
        self._require_eip3009(token)
        domain = self._domain(token)
        if private.get("domain") != domain.as_typed_data():
            raise ApprovalMismatch("the approval's EIP-712 domain is not this token's")
        auth = evm_tx.Authorization.from_json(private.get("authorization") or {})
        if (
            not evm_tx.same_address(auth.from_address, user)
            or not evm_tx.same_address(auth.to, session)
            or str(auth.value) != private.get("amount")
        ):
            raise ApprovalMismatch("the issued authorization does not match the approval")
        claimed = signed.get("typed_data")
        if claimed is not None and not isinstance(claimed, Mapping):
            raise ApprovalMismatch("typed_data must be an object")
        checked = evm_tx.check_signed_authorization(
            domain=domain,
            issued=auth,
            user_wallet=user,
            signature=signed.get("signature"),
            claimed_typed_data=claimed,
            now_s=None,  # expiry below: a settled approval stays settled once expired
        )
        from_block = int(private.get("issued_block", 0))
        if await self._authorization_used(token, user, auth.nonce, "latest"):
            return await self._settled_approval(token, auth, from_block)
        # Margin: the relayer tx must be mined before validBefore, not just sent.
        if await self._chain_now_s() + self._options.expiry_margin_s >= auth.valid_before:
            raise ApprovalExpired("the approval's validBefore has passed; ask for a fresh one")
        try:
            tx_hash = await self._relay_authorization(token, checked, failure=ApprovalRejected)
        except ApprovalRejected:
            # Lost a race with another submission of the same approval?
            if await self._authorization_used(token, user, auth.nonce, "latest"):
                return await self._settled_approval(token, auth, from_block)
            raise
        if tx_hash is None:  # settled or being settled by an earlier submission
            return await self._settled_approval(token, auth, from_block)
        receipt = await self._wait_receipt(tx_hash, relayer=True)
        if receipt["status"] != 1:
            if await self._authorization_used(token, user, auth.nonce, "latest"):
                return await self._settled_approval(token, auth, from_block)
            raise ApprovalRejected("the funding transfer reverted on chain; nothing moved")
        return ChainReceipt(tx_id=tx_hash, amount_base_units=auth.value)

    async def _settled_approval(
        self, token: TokenInfo, auth: evm_tx.Authorization, from_block: int
    ) -> ChainReceipt:
        """The approval's nonce is already used: succeed idempotently if it was used by
        exactly this transfer (a retry after a crash), refuse otherwise."""
        key = _authorization_key(auth.from_address, auth.nonce)
        for tx_hash in reversed(self._submissions.get(key, [])):
            receipt = await self._receipt(tx_hash)
            if receipt is not None and receipt["status"] == 1:
                await self._wait_confirmations(tx_hash, receipt)
                return ChainReceipt(tx_id=tx_hash, amount_base_units=auth.value)
        found = await self._find_authorization_tx(token, auth.from_address, auth.nonce, from_block)
        if found is not None:
            receipt = await self._receipt(found)
            if receipt is not None and _receipt_has_transfer(receipt, token, auth):
                await self._wait_confirmations(found, receipt)
                return ChainReceipt(tx_id=found, amount_base_units=auth.value)
        raise ApprovalRejected("the approval's EIP-3009 nonce is already used or canceled")

    async def _submit_transaction_approval(
        self,
        private: Mapping[str, Any],
        user: str,
        session: str,
        token: TokenInfo,
        signed: Mapping[str, Any],
    ) -> ChainReceipt:
        issued_tx = evm_tx.UnsignedTransaction.from_json(private.get("unsigned_transaction") or {})
        # What zpay issued must still be the transfer this approval stands for.
        expected = evm_tx.build_funding_transaction(
            chain_id=self.chain_id,
            token_address=token.address,
            user_wallet=user,
            session_wallet=session,
            amount_base_units=int(str(private.get("amount"))),
            nonce=issued_tx.nonce,
            max_fee_per_gas=issued_tx.max_fee_per_gas,
            max_priority_fee_per_gas=issued_tx.max_priority_fee_per_gas,
            gas=issued_tx.gas,
        )
        if expected != issued_tx:
            raise ApprovalMismatch("the issued transaction does not match the approval")
        checked = evm_tx.check_signed_funding_transaction(
            signed_transaction=signed.get("signed_transaction"),
            issued=issued_tx,
            user_wallet=user,
        )
        amount = int(str(private.get("amount")))
        receipt = await self._receipt(checked.tx_hash)
        if receipt is None:
            with translated("read user nonce"):
                mined_nonce = int(
                    await self._w3.eth.get_transaction_count(cast(Any, user), "latest")
                )
            if mined_nonce > checked.nonce:
                raise ApprovalExpired(
                    "the user's account has used this nonce for another transaction; "
                    "ask for a fresh approval"
                )
            await self._simulate_user_tx(issued_tx)
            try:
                await self._w3.eth.send_raw_transaction(checked.raw)
            except Web3RPCError as exc:
                message = rpc_message(exc).lower()
                if any(m in message for m in NONCE_ERRORS):
                    receipt = await self._receipt(checked.tx_hash)
                    if receipt is None:
                        raise ApprovalExpired("the user's nonce moved on; ask again") from exc
                elif not any(m in message for m in KNOWN_ERRORS):
                    raise ApprovalRejected(f"the node refused the transaction: {message}") from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ChainUnavailable(f"broadcast: {type(exc).__name__}") from exc
        receipt = await self._wait_receipt(checked.tx_hash, relayer=False)
        if receipt["status"] != 1:
            raise ApprovalRejected("the funding transaction reverted on chain; nothing moved")
        return ChainReceipt(tx_id=checked.tx_hash, amount_base_units=amount)

    async def _simulate_user_tx(self, tx: evm_tx.UnsignedTransaction) -> None:
        params = {"from": tx.sender, "to": tx.to, "value": tx.value, "data": to_hex(tx.data)}
        try:
            await self._w3.eth.call(cast(Any, params), "latest")
        except ContractLogicError as exc:
            raise ApprovalRejected(f"the transfer would fail: {exc.message or exc}") from exc
        except Web3RPCError as exc:
            raise ApprovalRejected(f"the transfer would fail: {rpc_message(exc)}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(f"simulate: {type(exc).__name__}") from exc

    async def _estimate_user_gas(self, tx: evm_tx.UnsignedTransaction) -> int:
        params = {"from": tx.sender, "to": tx.to, "value": tx.value, "data": to_hex(tx.data)}
        try:
            estimated = int(await self._w3.eth.estimate_gas(cast(Any, params)))
        except (Web3Exception, TimeoutError, aiohttp.ClientError, OSError):
            # The user may not hold the funds yet when the approval is issued; the
            # builder's default limit covers a plain transfer.
            return tx.gas
        return with_headroom(estimated, self._options.gas_headroom_percent)

    # ------------------------------------------------------------ relaying (impl)

    def _prepared(
        self, secret: bytes, token: TokenInfo, auth: evm_tx.Authorization
    ) -> PreparedTransfer:
        signed = evm_tx.sign_authorization(secret, self._domain(token), auth)
        payload = json.dumps(
            {
                "v": PAYLOAD_VERSION,
                "chain_id": self.chain_id,
                "token": token.address,
                "authorization": auth.to_json(),
                "signature": "0x" + (signed.r + signed.s + bytes([signed.v])).hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return PreparedTransfer(
            reference=_make_reference(auth),
            payload=payload,
            extra={
                "token": token.address,
                "from": auth.from_address,
                "to": auth.to,
                "nonce": "0x" + auth.nonce.hex(),
                "valid_before": auth.valid_before,
            },
        )

    def _decode_prepared(
        self, prepared: PreparedTransfer
    ) -> tuple[TokenInfo, evm_tx.SignedAuthorization]:
        try:
            data = json.loads(prepared.payload)
            if data.get("v") != PAYLOAD_VERSION or data.get("chain_id") != self.chain_id:
                raise ValueError("payload is for another chain or version")
            token_address = str(data["token"])
            auth = evm_tx.Authorization.from_json(data["authorization"])
            v, r, s = evm_tx.split_signature(data["signature"])
        except (ValueError, KeyError, TypeError, ChainError) as exc:
            raise TransferFailed(f"not an EVM transfer prepared by this adapter: {exc}") from exc
        if _make_reference(auth) != prepared.reference:
            raise TransferFailed("the prepared transfer's reference does not match its payload")
        token = self._token_by_address(token_address)
        return token, evm_tx.SignedAuthorization(auth, v, r, s)

    async def _relay_authorization(
        self,
        token: TokenInfo,
        signed: evm_tx.SignedAuthorization,
        *,
        failure: type[ChainError],
    ) -> str | None:
        """Have the relayer submit `transferWithAuthorization`. Returns the new tx hash,
        or None when the authorization is already used or an earlier submission of it is
        still in the mempool (so a retry never pays gas twice, let alone moves twice).
        A transfer that would revert raises `failure` before anything is sent."""
        auth = signed.authorization
        key = _authorization_key(auth.from_address, auth.nonce)
        if await self._authorization_used(token, auth.from_address, auth.nonce, "latest"):
            return None
        for tx_hash in self._submissions.get(key, []):
            if await self._receipt(tx_hash) is None and await self._tx_known(tx_hash):
                return None
        data = evm_tx.encode_transfer_with_authorization(signed)
        try:
            gas = await self._estimate(self._relayer.address, token.address, data)
        except ChainError as exc:
            if exc.code != "reverted":
                raise
            if await self._authorization_used(token, auth.from_address, auth.nonce, "latest"):
                return None
            raise failure(f"the transfer would revert, nothing was sent: {exc}") from exc
        sent = await self._relayer.send(to=token.address, data=data, gas=gas, key=key)
        return sent.tx_hash

    def _remember(self, key: str, tx_hash: str) -> None:
        self._submissions.setdefault(key, []).append(tx_hash)
        self._submissions.move_to_end(key)
        while len(self._submissions) > 50_000:
            self._submissions.popitem(last=False)

    async def _settling_tx(
        self, token: TokenInfo, key: str, from_address: str, nonce: bytes
    ) -> str | None:
        for tx_hash in self._submissions.get(key, []):
            receipt = await self._receipt(tx_hash)
            if receipt is not None and receipt["status"] == 1:
                return tx_hash
        head = await self._block_number()
        try:
            return await self._find_authorization_tx(
                token, from_address, nonce, max(0, head - self._options.log_lookback_blocks)
            )
        except ChainUnavailable:
            return None  # the id is a convenience; the state query already answered

    async def _find_authorization_tx(
        self, token: TokenInfo, authorizer: str, nonce: bytes, from_block: int
    ) -> str | None:
        topics = [
            to_hex(evm_tx.TOPIC_AUTHORIZATION_USED),
            "0x" + "00" * 12 + authorizer[2:].lower(),
            to_hex(nonce),
        ]
        with translated("search AuthorizationUsed logs"):
            logs = await self._w3.eth.get_logs(
                cast(
                    Any,
                    {
                        "address": token.address,
                        "topics": topics,
                        "fromBlock": from_block,
                        "toBlock": "latest",
                    },
                )
            )
        for entry in logs:
            return to_hex(entry["transactionHash"])
        return None

    # ------------------------------------------------------------- node helpers

    async def _fees(self, *, urgent: bool = False) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): twice the base fee absorbs six full
        blocks of base-fee growth before a transaction stops being includable."""
        with translated("read fees"):
            block = await self._w3.eth.get_block("latest")
            priority = int(await self._w3.eth.max_priority_fee)
        base = int(block.get("baseFeePerGas", 0) or 0)
        if urgent:
            priority *= 2
        return 2 * base + priority, priority

    async def _tx_known(self, tx_hash: str) -> bool:
        try:
            await self._w3.eth.get_transaction(cast(Any, tx_hash))
        except TransactionNotFound:
            return False
        except (Web3Exception, TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(f"look up tx: {type(exc).__name__}") from exc
        return True

    async def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            receipt = await self._w3.eth.get_transaction_receipt(cast(Any, tx_hash))
        except TransactionNotFound:
            return None
        except (Web3Exception, TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable(f"read receipt: {type(exc).__name__}") from exc
        return dict(receipt)

    async def _wait_receipt(self, tx_hash: str, *, relayer: bool) -> dict[str, Any]:
        deadline = time.monotonic() + self._options.confirm_timeout_s
        while True:
            receipt = await self._receipt(tx_hash)
            if receipt is not None:
                return await self._wait_confirmations(tx_hash, receipt, deadline=deadline)
            if time.monotonic() >= deadline:
                raise ConfirmationTimeout(f"{tx_hash} not mined within the timeout")
            if relayer:
                await self._maybe_heal()
            await asyncio.sleep(self._options.poll_interval_s)

    async def _wait_confirmations(
        self, tx_hash: str, receipt: dict[str, Any], *, deadline: float | None = None
    ) -> dict[str, Any]:
        if deadline is None:
            deadline = time.monotonic() + self._options.confirm_timeout_s
        while True:
            head = await self._block_number()
            if head - int(receipt["blockNumber"]) + 1 >= self.network.confirmations:
                # Re-read: a reorg while we waited may have moved or dropped it.
                latest = await self._receipt(tx_hash)
                if latest is not None and latest["blockHash"] == receipt["blockHash"]:
                    return latest
                if latest is None:
                    return await self._wait_receipt(tx_hash, relayer=True)
                receipt = latest
                continue
            if time.monotonic() >= deadline:
                raise ConfirmationTimeout(f"{tx_hash} not confirmed within the timeout")
            await asyncio.sleep(self._options.poll_interval_s)

    async def _maybe_heal(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_heal < self._options.heal_interval_s:
            return
        if force and now - self._last_heal < self._options.poll_interval_s:
            return
        self._last_heal = now
        await self._relayer.heal()

    async def _block_number(self) -> int:
        with translated("read block number"):
            return int(await self._w3.eth.block_number)

    async def _latest_block_time_s(self) -> int:
        with translated("read latest block"):
            block = await self._w3.eth.get_block("latest")
        return int(block["timestamp"])

    async def _chain_now_s(self) -> int:
        """Time as the token will judge validBefore when issuing and checking: the later
        of the wall clock and the latest block's timestamp (a chain whose clock runs
        ahead — or a test that warped anvil — must not get authorizations that are
        expired on arrival)."""
        return max(int(time.time()), await self._latest_block_time_s())

    async def _call(self, to: str, data: bytes, block: str | int = "latest") -> bytes:
        with translated("call"):
            result = await self._w3.eth.call(
                cast(Any, {"to": to, "data": to_hex(data)}), cast(Any, block)
            )
        return bytes(result)

    async def _estimate(self, sender: str, to: str, data: bytes) -> int:
        with translated("estimate gas"):
            gas = await self._w3.eth.estimate_gas(
                cast(Any, {"from": sender, "to": to, "data": to_hex(data)})
            )
        return with_headroom(int(gas), self._options.gas_headroom_percent)

    async def _authorization_used(
        self, token: TokenInfo, authorizer: str, nonce: bytes, block: str | int
    ) -> bool:
        data = evm_tx.encode_authorization_state(authorizer, nonce)
        return evm_tx.decode_bool(await self._call(token.address, data, block))

    async def _raw_rpc(self, method: str, params: list[Any]) -> Any:
        with translated(method):
            response = await self._w3.provider.make_request(cast(Any, method), params)
        if "error" in response:
            raise ChainUnavailable(f"{method}: {response['error']}")
        return response.get("result")

    # ------------------------------------------------------------------ tokens

    def _own_token(self, token: TokenInfo) -> TokenInfo:
        """The adapter's own record of `token`: callers cannot smuggle in another
        contract address or EIP-712 domain under a known symbol."""
        if evm_tx.is_native(token.address):
            return self.native_token()
        own = self._tokens.get(token.symbol)
        if own is None or not own.address or not evm_tx.same_address(own.address, token.address):
            raise ChainError(
                f"{token.symbol} at {token.address} is not a token of {self.network.name}",
                code="unknown_token",
            )
        return own

    def _token_by_address(self, address: str) -> TokenInfo:
        for token in self._tokens.values():
            if token.address and evm_tx.same_address(token.address, address):
                return token
        raise ChainError(f"{address} is not a token of {self.network.name}", code="unknown_token")

    @staticmethod
    def _supports_eip3009(token: TokenInfo) -> bool:
        return (
            not evm_tx.is_native(token.address)
            and token.eip712_name is not None
            and token.eip712_version is not None
        )

    def _require_eip3009(self, token: TokenInfo) -> None:
        if not self._supports_eip3009(token):
            raise FlowNotSupported(
                f"{token.symbol} on {self.network.name} has no EIP-3009: session wallets "
                "cannot pay with it without holding gas"
            )

    def _domain(self, token: TokenInfo) -> evm_tx.TokenDomain:
        assert token.eip712_name is not None and token.eip712_version is not None
        return evm_tx.TokenDomain(
            name=token.eip712_name,
            version=token.eip712_version,
            chain_id=self.chain_id,
            verifying_contract=token.address,
        )


# ---------------------------------------------------------------------- helpers


def _authorization_key(from_address: str, nonce: bytes) -> str:
    return f"{from_address.lower()}:0x{nonce.hex()}"


def _make_reference(auth: evm_tx.Authorization) -> str:
    """`<from>:<nonce-hex>:<validBefore>`. (from, nonce) identify the transfer on chain
    (authorizationState); validBefore lets status say FAILED for certain once it passed."""
    return f"{auth.from_address}:0x{auth.nonce.hex()}:{auth.valid_before}"


def _parse_reference(reference: str) -> tuple[str, bytes, int]:
    try:
        from_address, nonce_hex, valid_before = reference.split(":")
        nonce = bytes.fromhex(nonce_hex.removeprefix("0x"))
        if len(nonce) != 32:
            raise ValueError("nonce must be 32 bytes")
        return evm_tx.checksum(from_address), nonce, int(valid_before)
    except (ValueError, ChainError) as exc:
        raise ChainError(f"not an EVM transfer reference: {reference!r}") from exc


def _receipt_has_transfer(
    receipt: Mapping[str, Any], token: TokenInfo, auth: evm_tx.Authorization
) -> bool:
    for entry in receipt.get("logs", []):
        topics = [bytes(t) for t in entry["topics"]]
        if (
            evm_tx.same_address(str(entry["address"]), token.address)
            and len(topics) == 3
            and topics[0] == evm_tx.TOPIC_TRANSFER
            and evm_tx.same_address("0x" + topics[1][12:].hex(), auth.from_address)
            and evm_tx.same_address("0x" + topics[2][12:].hex(), auth.to)
            and int.from_bytes(bytes(entry["data"]), "big") == auth.value
        ):
            return True
    return False
