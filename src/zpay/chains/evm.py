"""EVM chain family (anvil, Base, Arbitrum, Ethereum) behind the `ChainAdapter` protocol.

Fees are zpay's: a platform RELAYER account (holds ETH) submits every token movement as an
EIP-3009 `transferWithAuthorization` signed by whoever owns the funds — the user for a
funding approval, the session wallet for payments and sweeps — so session wallets never
hold gas. What gets signed and how it is checked is built in `evm_tx` and
`evm_approvals` (pure); this module only sends. web3 types and errors never leave the EVM
modules: they become `ChainError`s.

Imports go one way: `evm_node` (every RPC call, bounded) is the leaf; `evm_refs`
(references and payloads), `evm_status` (outcomes from the chain alone), `evm_relayer`
(the relayer, journaled in a `RelayerJournal` shared by every process) and `evm_local`
(anvil, the test token, the relayer key file) build on it; this module on all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from web3 import AsyncWeb3

from zpay.chains import evm_approvals, evm_refs, evm_status, evm_tx, evm_x402
from zpay.chains.anvil import AnvilProcess
from zpay.chains.evm_approvals import (
    FORMAT_EIP712,
    FORMAT_EVM_TRANSACTION,
    METHOD_EIP3009,
    METHOD_TRANSACTION,
)
from zpay.chains.evm_local import (
    check_chain_id,
    deploy_test_tokens,
    fund_relayer,
    identify_chain,
    load_or_create_key,
    start_anvil,
)
from zpay.chains.evm_local import (
    load_test_token_artifact as load_test_token_artifact,  # re-exported: public here before
)
from zpay.chains.evm_node import EvmNode, HeadWatch, with_headroom
from zpay.chains.evm_options import EvmOptions, _local_options, local_options
from zpay.chains.evm_relayer import Relayer, decode_key
from zpay.chains.evm_tokens import TokenBook, native_token
from zpay.chains.protocol import (
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
    X402Exact,
    X402Signed,
)
from zpay.chains.registry import NetworkSpec
from zpay.chains.relayer_journal import InMemoryRelayerJournal, OutstandingTx, RelayerJournal

__all__ = [
    "FORMAT_EIP712",
    "FORMAT_EVM_TRANSACTION",
    "METHOD_EIP3009",
    "METHOD_TRANSACTION",
    "EvmAdapter",
    "EvmOptions",
    "load_test_token_artifact",
    "local_options",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- adapter


class EvmAdapter:
    """`ChainAdapter` for one EVM network. Build it with `local`, `rpc`, `embedded` or
    `open`; never directly."""

    # A local chain's identity and where it lives (`evm_local.identify_chain`): paired
    # with the books at start-up. None on public networks.
    _instance_id: str | None = None
    _instance_location: str | None = None

    def __init__(
        self,
        *,
        spec: NetworkSpec,
        rpc_url: str,
        relayer_secret: bytes,
        options: EvmOptions,
        token_addresses: Mapping[str, str] | None = None,
        anvil: AnvilProcess | None = None,
        journal: RelayerJournal | None = None,
    ) -> None:
        if spec.info.family is not Family.EVM or spec.info.chain_id is None:
            raise ChainError(f"{spec.info.name} is not an EVM network with a chain id")
        if not rpc_url:
            raise ChainUnavailable(f"no RPC URL for {spec.info.name}")
        self.network: NetworkInfo = spec.info
        self.chain_id: int = spec.info.chain_id
        self._options = options
        self._anvil = anvil
        self.node = EvmNode(rpc_url, request_timeout_s=options.request_bound_s)
        self._heads = HeadWatch(self.node, options.poll_interval_s)
        if evm_tx.ecc_backend_name() != "CoinCurveECCBackend":
            log.warning("eth-keys is not using coincurve: EVM signing will be slow")
        # Shared by every process that holds the relayer key (default: this one only).
        self._relayer = Relayer(
            self.node,
            journal if journal is not None else InMemoryRelayerJournal(),
            relayer_secret,
            chain=spec.info.name,
            chain_id=self.chain_id,
            stuck_after_s=options.stuck_after_s,
        )
        self._book = TokenBook(spec.info.name, self.chain_id, spec.tokens, token_addresses)
        self._tokens = self._book.by_symbol  # `evm_local` fills in deployed test tokens
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
        journal: RelayerJournal | None = None,
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
            journal=journal,
        )

    @classmethod
    async def local(
        cls,
        spec: NetworkSpec,
        anvil_rpc_url: str,
        relayer_secret: bytes,
        *,
        options: EvmOptions | None = None,
        journal: RelayerJournal | None = None,
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
            journal=journal,
        )
        try:
            await check_chain_id(adapter)
            adapter._instance_id, adapter._instance_location = await identify_chain(adapter)
            adapter._relayer.journal_as(f"{spec.info.name[:23]}@{adapter._instance_id[:16]}")
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
        journal: RelayerJournal | None = None,
    ) -> EvmAdapter:
        """Start anvil (owned by the adapter: close() stops it) and connect `local`.
        With `state_path`, the chain survives restarts like the database does."""
        assert spec.info.chain_id is not None
        anvil = await start_anvil(spec.info.chain_id, state_path)
        try:
            return await cls.local(
                spec,
                anvil.rpc_url,
                relayer_secret,
                options=options,
                journal=journal,
                _anvil=anvil,
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
        journal: RelayerJournal | None = None,
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
                    spec, relayer_secret, state_path=state_path, options=options, journal=journal
                )
            return await cls.local(
                spec, spec.rpc_url, relayer_secret, options=options, journal=journal
            )
        if relayer_secret is None:
            raise ChainError(f"{spec.info.name} needs a relayer key (ZPAY_EVM_RELAYER_KEY)")
        return cls.rpc(spec, relayer_secret, options=options, journal=journal)

    # ------------------------------------------------------------ small extras

    @property
    def relayer_address(self) -> str:
        return self._relayer.address

    @property
    def instance_id(self) -> str | None:
        return self._instance_id

    @property
    def instance_location(self) -> str | None:
        return self._instance_location

    @property
    def rpc_url(self) -> str:
        return self.node.rpc_url

    @property
    def _w3(self) -> AsyncWeb3[Any]:
        """The node's web3, for `evm_local` (which predates `evm_node`)."""
        return self.node.w3

    def native_token(self) -> TokenInfo:
        """ETH as a token (address "native"): for the fallback approval and the faucet."""
        return native_token()

    async def relayer_balance_wei(self) -> int:
        return await self.node.balance(self._relayer.address)

    async def verify_tokens(self) -> None:
        """Check that each EIP-3009 token's on-chain DOMAIN_SEPARATOR() is the one the
        registry's eip712_name/version produce: a wrong name would make every user
        signature fail on chain; better to fail at start."""
        for token in self._book.eip3009():
            expected = self._book.domain(token).separator()
            actual = await self.node.call(token.address, evm_tx.SELECTOR_DOMAIN_SEPARATOR)
            if actual != expected:
                raise ChainError(
                    f"{self.network.name}: {token.symbol} EIP-712 domain mismatch: the registry "
                    f"says name={token.eip712_name!r} version={token.eip712_version!r}",
                    code="token_domain_mismatch",
                )

    async def relayer_journal(self) -> list[OutstandingTx]:
        """The relayer transactions journaled as outstanding (settled lazily: a mined one
        stays until the next send or heal notices)."""
        return await self._relayer.journaled()

    async def resync_relayer(self) -> None:
        """Re-broadcast, replace or fill dropped or stuck relayer transactions (for jobs;
        any process can, the journal is shared)."""
        await self._relayer.heal()

    async def maintain(self) -> None:
        await self.resync_relayer()

    # ----------------------------------------------------------------- protocol

    def token(self, symbol: str) -> TokenInfo:
        return self._book.token(symbol)

    def validate_address(self, address: str) -> str:
        canonical = evm_tx.checksum(address)
        if canonical == evm_tx.ZERO_ADDRESS:
            raise InvalidAddress("the zero address cannot hold or receive funds")
        return canonical

    def reserved_recipients(self, session_wallet: str, token: TokenInfo) -> frozenset[str]:
        return frozenset(evm_tx.checksum(a) for a in (
            session_wallet, evm_tx.ZERO_ADDRESS, self._relayer.address,
            *([token.address] if token.address else [])))

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
        """Renewals of one funding pass the same `approval_id`: they share the EIP-3009
        nonce, so at most one version can ever fund."""
        return await evm_approvals.build(
            self.node,
            self._book,
            network=self.network.name,
            chain_id=self.chain_id,
            approval_id=approval_id,
            user=self.validate_address(user_wallet),
            session=self.validate_address(session_wallet),
            token=self._book.own(token),
            amount_base_units=amount_base_units,
            method=method,
            approval_ttl_s=self._options.approval_ttl_s,
            gas_headroom_percent=self._options.gas_headroom_percent,
        )

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
        prepared = evm_approvals.prepared_approval(
            issued.private,
            network=self.network.name,
            chain_id=self.chain_id,
            book=self._book,
            token=self._book.own(token),
            user=self.validate_address(user_wallet),
            session=self.validate_address(session_wallet),
            amount_base_units=amount_base_units,
            signed=signed,
        )
        # Refused only if the chain proves it can never land (lapsed or its nonce used
        # by something else); one that landed already is returned, its status says so.
        status = await self.transfer_status(prepared.reference, valid_until=prepared.valid_until)
        if status.state is TransferState.FAILED:
            raise evm_approvals.approval_failure(status)
        return prepared

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
        return await evm_approvals.submit_and_wait(
            self, prepared, amount_base_units, timeout_s=self._options.confirm_timeout_s
        )

    async def prepare_transfer(
        self,
        *,
        secret: bytes,
        source: str,
        destination: str,
        token: TokenInfo,
        amount_base_units: int,
        reference_seed: str,
        close_source: bool = False,  # nothing to close on EVM: no rent, no token account
    ) -> PreparedTransfer:
        evm_tx.require_amount(amount_base_units)
        return await self._sign_transfer(
            secret,
            source,
            destination,
            token,
            amount_base_units,
            evm_tx.payment_nonce(reference_seed),
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
        """x402 `exact`: an EIP-3009 authorization the facilitator submits (evm_x402)."""
        token = self._book.own(token)
        source = self.validate_address(source)
        if not evm_tx.same_address(evm_tx.address_of(secret), source):
            raise ChainError("the secret does not belong to the source wallet")
        return evm_x402.sign_exact(
            secret,
            domain=self._book.domain(token),
            source=source,
            exact=X402Exact(
                pay_to=self.validate_address(exact.pay_to),
                asset=exact.asset,
                amount_base_units=exact.amount_base_units,
                validity_s=exact.validity_s,
                extra=exact.extra,
            ),
            now_s=await self.node.chain_now_s(),
            reference_seed=reference_seed,
        )

    async def submit_transfer(self, prepared: PreparedTransfer) -> None:
        """Send a prepared transfer (again): an authorization through the relayer, or a
        user-signed transaction as is. Never moves funds twice, and never pays a relayer
        tx for an authorization that is used or carried by an outstanding one.
        TransferFailed: nothing was sent by THIS call (`transfer_status` tells the
        transfer's fate)."""
        try:
            decoded = evm_refs.decode_payload(prepared.payload, self.chain_id)
            ref = evm_refs.parse_reference(prepared.reference)
        except ChainError as exc:
            raise TransferFailed(f"not an EVM transfer prepared by this adapter: {exc}") from exc
        if isinstance(decoded, evm_tx.DecodedTransaction):
            if not isinstance(ref, evm_refs.TransactionRef) or ref.tx_hash != decoded.tx_hash:
                raise TransferFailed("the prepared transfer's reference does not match its payload")
            await evm_approvals.send_user_transaction(self.node, decoded)
            return
        token_address, signed = decoded
        if not evm_refs.reference_of(signed.authorization, prepared.reference):
            raise TransferFailed("the prepared transfer's reference does not match its payload")
        await self._relayer.submit_authorization(
            token=self._book.by_address(token_address).address,
            signed=signed,
            expiry_margin_s=self._options.expiry_margin_s,
            gas_headroom_percent=self._options.gas_headroom_percent,
        )

    async def transfer_status(
        self, reference: str, *, valid_until: int | None = None
    ) -> TransferStatus:
        """From the chain alone (see `evm_status`). For an authorization the validBefore
        in its reference is the signed one and decides; `valid_until` adds nothing."""
        ref = evm_refs.parse_reference(reference)
        if isinstance(ref, evm_refs.TransactionRef):
            return await evm_status.transaction_status(
                self.node, ref, confirmations=self.network.confirmations
            )
        return await evm_status.authorization_status(
            self.node,
            ref,
            tokens=[t.address for t in self._book.eip3009()],
            valid_before=ref.valid_before,
            confirmations=self.network.confirmations,
            lookback_blocks=self._options.log_lookback_blocks,
            outstanding=self._outstanding,
        )

    async def wait_for_transfer(
        self, reference: str, *, timeout_s: float, valid_until: int | None = None
    ) -> TransferStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self._heads.generation
            status = await self.transfer_status(reference, valid_until=valid_until)
            if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
                return status
            if time.monotonic() >= deadline:
                return status
            await self._maybe_heal()
            # Heal's own cadence is kept: a lost relayer tx is re-sent without a new block.
            wait = min(self._options.heal_interval_s, deadline - time.monotonic())
            await self._heads.moved_since(seen, max(0.0, wait))

    async def balance(self, address: str, token: TokenInfo) -> int:
        token = self._book.own(token)
        address = self.validate_address(address)
        if evm_tx.is_native(token.address):
            return await self.node.balance(address)
        return evm_tx.decode_uint(
            await self.node.call(token.address, evm_tx.encode_balance_of(address))
        )

    async def sweep(
        self, *, secret: bytes, source: str, destination: str, token: TokenInfo
    ) -> ChainReceipt | None:
        remaining = await self.balance(source, token)
        if remaining == 0:
            return None
        # A random nonce is safe here: a sweep only ever moves the wallet's own balance
        # to the user, so a repeated sweep can at most find nothing left.
        prepared = await self._sign_transfer(
            secret, source, destination, token, remaining, evm_tx.random_nonce()
        )
        await self.submit_transfer(prepared)
        status = await self.wait_for_transfer(
            prepared.reference,
            timeout_s=self._options.confirm_timeout_s,
            valid_until=prepared.valid_until,
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
            token = self._book.own(token)
            data = evm_tx.encode_mint(address, amount_base_units)
            gas = await self.node.estimate_gas(
                sender=self._relayer.address, to=token.address, data=data
            )
            gas = with_headroom(gas, self._options.gas_headroom_percent)
            sent = await self._relayer.send(to=token.address, data=data, gas=gas)
        receipt = await self._wait_receipt(sent.tx_hash, relayer=True)
        if receipt["status"] != 1:
            raise TransferFailed("faucet transaction reverted")
        return ChainReceipt(tx_id=sent.tx_hash, amount_base_units=amount_base_units)

    async def close(self) -> None:
        await self._heads.close()
        await self.node.close()
        if self._anvil is not None:
            await self._anvil.stop_async()
            self._anvil = None

    # -------------------------------------------------------------------- (impl)

    async def _sign_transfer(
        self,
        secret: bytes,
        source: str,
        destination: str,
        token: TokenInfo,
        amount_base_units: int,
        nonce: bytes,
    ) -> PreparedTransfer:
        """An EIP-3009 authorization from the session wallet `source` (payments, sweeps)."""
        token = self._book.own(token)
        domain = self._book.domain(token)
        source = self.validate_address(source)
        if not evm_tx.same_address(evm_tx.address_of(secret), source):
            raise ChainError("the secret does not belong to the source wallet")
        auth = evm_tx.Authorization(
            from_address=source,
            to=self.validate_address(destination),
            value=amount_base_units,
            valid_after=0,
            valid_before=await self.node.chain_now_s() + self._options.payment_validity_s,
            nonce=nonce,
        )
        signed = evm_tx.sign_authorization(secret, domain, auth)
        reference = evm_refs.payment_reference(auth)
        return evm_refs.prepared_authorization(self.chain_id, token.address, signed, reference)

    async def _outstanding(self, authorization: str, block: int) -> str | None:
        """A journaled relayer tx carrying `authorization`, not mined by `block` and still
        on the node. One the node lost makes the transfer UNKNOWN: re-sending it (any
        process may) puts that very transaction back, or replaces it."""
        for tx in reversed(await self._relayer.outstanding(authorization, mined_at=block)):
            if await self.node.tx_known(tx.tx_hash):
                return tx.tx_hash
        return None

    async def _wait_receipt(self, tx_hash: str, *, relayer: bool = True) -> dict[str, Any]:
        """The receipt of `tx_hash` once `confirmations` deep (faucet, deployments)."""
        deadline = time.monotonic() + self._options.confirm_timeout_s
        while True:
            head = await self.node.block_number()
            receipt = await self.node.receipt(tx_hash)
            if receipt is not None and (
                head - int(receipt["blockNumber"]) + 1 >= self.network.confirmations
            ):
                return receipt
            if time.monotonic() >= deadline:
                raise ConfirmationTimeout(f"{tx_hash} not confirmed within the timeout")
            if relayer:
                await self._maybe_heal()
            await asyncio.sleep(self._options.poll_interval_s)

    async def _maybe_heal(self) -> None:
        now = time.monotonic()
        if now - self._last_heal < self._options.heal_interval_s:
            return
        self._last_heal = now
        try:
            await self._relayer.heal()
        except ChainError as exc:  # housekeeping: the next wait or job tries again
            log.warning("relayer heal failed: %s", exc)

    async def _raw_rpc(self, method: str, params: list[Any]) -> Any:
        return await self.node.raw_rpc(method, params)
