"""Set-up of a local Solana network reached over JSON-RPC (a `solana-test-validator`).

It gives the validator what the embedded LiteSVM network creates for itself: on first
start a platform fee payer (funded by `requestAirdrop`, which test validators serve), a
faucet key and one mint per token of the network spec (faucet = mint authority, the fee
payer pays the rent). They are kept in the state directory and reused on later starts:

    state_dir/chain.json        keys, mints and the validator's genesis hash (mode 0600)
    state_dir/.bootstrap.lock   flock held while setting up: the API and the worker share
                                the directory and may start together, yet only one of them
                                creates the keys and mints; the other then loads them

The chain's identity (`instance_id`) is the validator's genesis hash, so the pairing check
at start-up refuses a database paired with another validator. A state directory set up on
one validator is refused on another (its mints and keys do not exist there).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID

from zpay.chains import solana_tx as stx
from zpay.chains.protocol import ChainError, ChainUnavailable, TransferState
from zpay.chains.solana import RpcBackend, TxRejected

__all__ = ["LocalRpcState", "atomic_write", "bootstrap_local_rpc", "check_mint"]

log = logging.getLogger(__name__)

STATE_FILE = "chain.json"
BOOTSTRAP_LOCK_FILE = ".bootstrap.lock"
_STATE_FORMAT = "zpay-solana-local-rpc"
_STATE_VERSION = 1
FEE_PAYER_AIRDROP_LAMPORTS = 100 * 10**9
FEE_PAYER_LOW_LAMPORTS = 10 * 10**9
_LOCK_POLL_S = 0.05


@dataclass
class LocalRpcState:
    """What a local network over RPC needs beyond the registry: its keys and mints."""

    instance_id: str  # `genesis:<hash>` of the validator the state belongs to
    fee_payer: Keypair
    faucet: Keypair
    mints: dict[str, tuple[Pubkey, int]] = field(default_factory=dict)  # symbol -> mint, decimals

    def to_json(self) -> bytes:
        document = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "instance_id": self.instance_id,
            "fee_payer_secret": bytes(self.fee_payer).hex(),
            "faucet_secret": bytes(self.faucet).hex(),
            "mints": {
                symbol: {"address": str(mint), "decimals": decimals}
                for symbol, (mint, decimals) in self.mints.items()
            },
        }
        return json.dumps(document, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LocalRpcState:
        """ValueError on anything unexpected (never echoing the secrets it holds)."""
        try:
            document: dict[str, Any] = json.loads(raw)
            if document.get("format") != _STATE_FORMAT or document.get("version") != _STATE_VERSION:
                raise ValueError("format")
            return cls(
                instance_id=str(document["instance_id"]),
                fee_payer=Keypair.from_bytes(bytes.fromhex(document["fee_payer_secret"])),
                faucet=Keypair.from_bytes(bytes.fromhex(document["faucet_secret"])),
                mints={
                    str(symbol): (Pubkey.from_string(m["address"]), int(m["decimals"]))
                    for symbol, m in dict(document["mints"]).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("not a zpay solana-local-rpc state document") from None


async def bootstrap_local_rpc(
    backend: RpcBackend,
    state_dir: Path,
    *,
    tokens: Mapping[str, int],
    confirm_timeout_s: float = 30.0,
    lock_timeout_s: float = 120.0,
) -> LocalRpcState:
    """Load (or on first start create) the keys and mints of `state_dir` on the validator
    behind `backend`; top the fee payer up when low. `tokens`: symbol -> decimals."""
    state_dir.mkdir(parents=True, exist_ok=True)
    genesis = await backend.genesis_id()
    async with _bootstrap_lock(state_dir, lock_timeout_s):
        path = state_dir / STATE_FILE
        if path.exists():
            state = _load(path, state_dir)
            if state.instance_id != genesis:
                raise ChainUnavailable(
                    f"the solana-local state in {state_dir} was set up on validator "
                    f"{state.instance_id}, but the RPC URL serves {genesis}; its keys and mints "
                    f"do not exist there (if the validator was reset, remove {path} and use a "
                    "fresh database)",
                    code="chain_state_mismatch",
                )
            for symbol, (mint, decimals) in state.mints.items():
                account = await backend.get_account(mint)
                data, owner = (account.data, account.owner) if account else (b"", None)
                if not check_mint(
                    data, program_owner=owner, authority=state.faucet.pubkey(), decimals=decimals
                ):
                    raise ChainUnavailable(
                        f"solana-local mint {symbol} ({mint}) recorded in {path} is not on the "
                        "validator as zpay created it",
                        code="chain_state_mismatch",
                    )
        else:
            # Keys are written before anything is spent, so they are never lost; a crash
            # before a mint is recorded leaves at most an unused mint on the validator.
            state = LocalRpcState(instance_id=genesis, fee_payer=Keypair(), faucet=Keypair())
            atomic_write(path, state.to_json())
            log.info("solana-local over RPC: new state for validator %s", genesis)
        await _ensure_fee_payer_funded(backend, state, confirm_timeout_s)
        if await _ensure_mints(backend, state, tokens, confirm_timeout_s):
            atomic_write(path, state.to_json())
    return state


def check_mint(
    data: bytes, *, program_owner: Pubkey | None, authority: Pubkey, decimals: int
) -> bool:
    """True when `data` is an initialised SPL mint with this authority and decimals.
    Layout: COption<Pubkey> mint_authority (4 + 32), supply u64, decimals u8, initialised."""
    return (
        program_owner == TOKEN_PROGRAM_ID
        and len(data) == MINT_LEN
        and data[0:4] == b"\x01\x00\x00\x00"
        and data[4:36] == bytes(authority)
        and data[44] == decimals
        and data[45] == 1
    )


# --------------------------------------------------------------------------- internals


async def _ensure_fee_payer_funded(
    backend: RpcBackend, state: LocalRpcState, timeout_s: float
) -> None:
    if await _lamports(backend, state.fee_payer.pubkey()) >= FEE_PAYER_LOW_LAMPORTS:
        return
    signature = await backend.request_airdrop(state.fee_payer.pubkey(), FEE_PAYER_AIRDROP_LAMPORTS)
    await _wait_confirmed(backend, signature, timeout_s, what="the fee payer airdrop")
    # The status can run ahead of the account the node serves at our commitment.
    deadline = time.monotonic() + timeout_s
    while await _lamports(backend, state.fee_payer.pubkey()) < FEE_PAYER_LOW_LAMPORTS:
        if time.monotonic() > deadline:
            raise _setup_failed("the fee payer airdrop landed but the balance did not show")
        await asyncio.sleep(backend.poll_interval_s)
    log.info("solana-local over RPC: airdropped SOL to fee payer %s", state.fee_payer.pubkey())


async def _ensure_mints(
    backend: RpcBackend, state: LocalRpcState, tokens: Mapping[str, int], timeout_s: float
) -> bool:
    """Create the missing mints; True when any was created."""
    created = False
    for symbol, decimals in tokens.items():
        if symbol in state.mints:
            if state.mints[symbol][1] != decimals:
                raise ChainError(
                    f"solana-local mint {symbol} has {state.mints[symbol][1]} decimals, "
                    f"the network spec says {decimals}",
                    code="invalid_config",
                )
            continue
        mint = Keypair()
        recent = await backend.latest_blockhash()
        transaction = stx.build_create_mint(
            fee_payer=state.fee_payer,
            mint=mint,
            mint_authority=state.faucet.pubkey(),
            decimals=decimals,
            rent_lamports=await backend.minimum_balance_for_rent_exemption(MINT_LEN),
            recent_blockhash=recent.blockhash,
        )
        try:
            await backend.send(transaction)
        except TxRejected as exc:
            raise _setup_failed(
                f"the validator refused to create the {symbol} mint: {exc}"
            ) from None
        await _wait_confirmed(
            backend, transaction.signatures[0], timeout_s, what=f"creating the {symbol} mint"
        )
        state.mints[symbol] = (mint.pubkey(), decimals)
        created = True
        log.info("solana-local over RPC: created %s mint %s", symbol, mint.pubkey())
    return created


async def _lamports(backend: RpcBackend, pubkey: Pubkey) -> int:
    account = await backend.get_account(pubkey)
    return account.lamports if account is not None else 0


async def _wait_confirmed(
    backend: RpcBackend, signature: Signature, timeout_s: float, *, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await backend.signature_status(signature)
        if status.state is TransferState.CONFIRMED:
            return
        if status.state is TransferState.FAILED:
            raise _setup_failed(f"{what} failed: {status.error}")
        if time.monotonic() > deadline:
            raise _setup_failed(f"{what} was not confirmed within {timeout_s:g}s")
        await asyncio.sleep(backend.poll_interval_s)


def _setup_failed(message: str) -> ChainUnavailable:
    return ChainUnavailable(f"solana-local set-up: {message}", code="local_setup_failed")


def _load(path: Path, state_dir: Path) -> LocalRpcState:
    try:
        return LocalRpcState.from_json(path.read_bytes())
    except (OSError, ValueError):
        raise ChainUnavailable(
            f"the solana-local state in {state_dir} is unreadable (or belongs to the embedded "
            "chain, not to a validator reached over RPC)",
            code="chain_state_corrupt",
        ) from None


@contextlib.asynccontextmanager
async def _bootstrap_lock(state_dir: Path, timeout_s: float) -> AsyncIterator[None]:
    """flock on the state directory, waited for without blocking the event loop."""
    handle = open(state_dir / BOOTSTRAP_LOCK_FILE, "ab")  # noqa: SIM115 - closed below
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChainUnavailable(
                        f"another process has been setting up {state_dir} for over {timeout_s:g}s",
                        code="chain_state_locked",
                    ) from None
                await asyncio.sleep(_LOCK_POLL_S)
        yield
    finally:
        handle.close()  # releases the flock


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` by `data` atomically and durably, created with `mode`."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # O_CREAT keeps an existing file's mode; start from a fresh one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
