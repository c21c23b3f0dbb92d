"""The embedded `solana-local` network: solders' LiteSVM in-process, persisted to disk.

On first start it creates the platform fee payer (airdropped SOL), one mint per token of
the network spec (6 decimals for USDC, mint authority = a local faucet key) and a random
`instance_id`. With a `state_dir` the chain survives restarts:

    state_dir/chain.json   keys, mints, instance_id (written once, mode 0600)
    state_dir/ledger.bin   append-only frames [len u32][crc32 u32][entries...]; one frame
                           per transaction holds every writable account it touched (or a
                           tombstone), its signature and outcome, so a frame is applied
                           whole or not at all; compacted into one snapshot
                           frame when it outgrows it
    state_dir/.lock        flock, taken for each operation (shared to read, exclusive to
                           write): several processes may share the chain

Each process keeps a replica: before every operation, under the flock, it applies what
other processes appended to the ledger since it last looked (or rebuilds itself from the
ledger if another process compacted it), so every process sees one chain. A torn tail (a
writer that died mid-frame) is cut off by the next writer.

LiteSVM only accepts its latest blockhash and derives each new one deterministically from
the previous, so replaying the number of `advance_blockhash` calls on load restores the
exact blockhash: approvals issued before a restart stay valid. LiteSVM forgets processed
signatures on restart; the ledger does not, and `process` refuses a known signature, so a
transaction can never be replayed across a restart either.

LiteSVM is synchronous and not thread-safe: every call holds `LocalChain._lock` and is
short (a transaction is ~1 ms including the ledger write).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from solders.account import Account
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import TransactionErrorFieldless
from spl.token.constants import MINT_LEN

from zpay.chains import solana_tx as stx
from zpay.chains.protocol import ChainError, ChainUnavailable, TransferState, TransferStatus
from zpay.chains.solana import RecentBlockhash, TxRejected
from zpay.chains.solana_bootstrap import atomic_write

__all__ = ["LocalBackend", "LocalChain"]

log = logging.getLogger(__name__)

STATE_FILE = "chain.json"
LEDGER_FILE = "ledger.bin"
LOCK_FILE = ".lock"
_STATE_FORMAT = "zpay-solana-local"
_STATE_VERSION = 1
_FEE_PAYER_AIRDROP_LAMPORTS = 1_000 * 10**9
_FEE_PAYER_LOW_LAMPORTS = 10 * 10**9
_FRAME_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
_TAG_ACCOUNT = b"A"  # pubkey(32) len(u32) bincode(Account)
_TAG_DELETED = b"D"  # pubkey(32)
_TAG_SIGNATURE = b"S"  # signature(64) ok(u8) len(u16) utf-8 error
_TAG_HEIGHT = b"H"  # blockhash height u64: how many times the blockhash was advanced
# Compact the ledger online once it outgrows its last snapshot this much (and this size).
_COMPACT_RATIO = 4
_COMPACT_MIN_BYTES = 64 * 2**20
# How a replica closes an account another process's frame recorded as closed (LiteSVM
# drops an account set without lamports).
_CLOSED = Account(lamports=0, data=b"", owner=Pubkey.default(), executable=False, rent_epoch=0)


class LocalChain:
    """LiteSVM with the zpay genesis (fee payer, mints, faucet) and an on-disk ledger."""

    def __init__(
        self,
        state_dir: Path | None,
        *,
        tokens: Mapping[str, int],
        fsync: bool = True,
    ) -> None:
        """`tokens`: symbol -> decimals of the mints to create. `fsync=False` trades
        durability across power loss (not process crashes) for ~0.3 ms per transaction."""
        self._lock = threading.Lock()
        # Signatures are verified once, by `_process_locked`, not by LiteSVM in both its
        # simulation and its execution (~120 µs each: a quarter of a payment's chain time).
        self._svm = LiteSVM().with_sigverify(False)
        self._fsync = fsync
        self._signatures: dict[Signature, str | None] = {}  # None = succeeded
        # A later signature of a transaction -> its id (the first), for display only: after
        # a restart the signature itself stands in (the outcome is in `_signatures`).
        self._tx_ids: dict[Signature, Signature] = {}
        self._height = 0
        self._mints: dict[str, tuple[Pubkey, int]] = {}
        self._known: set[Pubkey] = set()  # accounts the ledger holds (to snapshot them)
        self._ledger_path: Path | None = None
        self._ledger: IO[bytes] | None = None
        self._ledger_file_id: tuple[int, int] | None = None  # (device, inode) applied
        self._applied = 0  # ledger bytes this replica holds (applied or written)
        self._snapshot_bytes = 0
        self._lock_file: IO[bytes] | None = None
        self._closed = False
        self._state_dir = state_dir
        if state_dir is None:
            self._genesis()
            self._ensure_mints(tokens)
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(state_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held until close()
        try:
            with self._dir_locked(exclusive=True):
                fresh = not (state_dir / STATE_FILE).exists()
                self._ledger_path = state_dir / LEDGER_FILE
                if fresh:
                    self._genesis()
                    self._compact()
                    # chain.json is published after the first snapshot: a crash in between
                    # leaves no chain.json, and the next start simply begins afresh.
                    self._write_state(state_dir)
                else:
                    self._load(state_dir)
                self._ensure_mints(tokens)
                self._ensure_fee_payer_funded()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- identity

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def fee_payer(self) -> Keypair:
        return self._fee_payer

    def mint_address(self, symbol: str) -> str:
        return str(self._mints[symbol][0])

    # ---------------------------------------------------------------- chain operations

    def latest_blockhash(self) -> RecentBlockhash:
        with self._locked():
            return RecentBlockhash(self._svm.latest_blockhash(), self._height, None)

    def is_blockhash_valid(self, blockhash: Hash) -> bool:
        with self._locked():
            return blockhash == self._svm.latest_blockhash()

    def advance_blockhash(self) -> None:
        """Lapse the current blockhash: every transaction signed against it is now dead."""
        with self._locked(exclusive=True):
            self._svm.expire_blockhash()
            self._height += 1
            self._append([_height_entry(self._height)])

    def process(self, transaction: Transaction) -> None:
        """Preflight, then execute. TxRejected when refused; nothing is recorded then, like an
        RPC node's preflight (a refused transaction may be resubmitted once it can pass)."""
        outcome = self.process_many([transaction])[0]
        if outcome is not None:
            raise outcome

    def process_many(self, transactions: list[Transaction]) -> list[Exception | None]:
        """`process` for each, in order (its error or None), all made durable by ONE fsync
        before any of them is answered (a group commit: a burst of concurrent payments
        costs the disk one flush). Nobody sees any of them before that fsync: the chain's
        lock is held throughout (and, across processes, the state directory's)."""
        outcomes: list[Exception | None] = []
        with self._locked(exclusive=True):
            try:
                for transaction in transactions:
                    try:
                        self._process_locked(transaction, sync=False)
                        outcomes.append(None)
                    except Exception as exc:  # this transaction's own refusal or failure
                        outcomes.append(exc)
            finally:
                self._sync()
        return outcomes

    def signature_status(self, signature: Signature) -> TransferStatus:
        with self._locked():
            if signature not in self._signatures:
                return TransferStatus(TransferState.UNKNOWN, str(signature))
            error = self._signatures[signature]
            tx_id = str(self._tx_ids.get(signature, signature))
        if error is None:
            return TransferStatus(TransferState.CONFIRMED, tx_id)
        return TransferStatus(TransferState.FAILED, tx_id, error)

    def get_account(self, pubkey: Pubkey) -> Account | None:
        with self._locked():
            return self._svm.get_account(pubkey)

    def faucet_mint(self, owner: Pubkey, mint: Pubkey, amount_base_units: int) -> str:
        """Mint test tokens to `owner` (creating its token account); the transaction id."""
        decimals = next((d for m, d in self._mints.values() if m == mint), None)
        if decimals is None:
            raise ChainError(f"{mint} is not a mint of this local chain", code="unknown_token")
        with self._locked(exclusive=True):
            transaction = stx.build_faucet_mint(
                fee_payer=self._fee_payer,
                mint_authority=self._faucet,
                owner=owner,
                mint=mint,
                decimals=decimals,
                amount_base_units=amount_base_units,
                recent_blockhash=self._svm.latest_blockhash(),
                nonce=uuid.uuid4().hex,  # two identical faucet calls must both mint
            )
            try:
                self._process_locked(transaction)
            except TxRejected as exc:
                raise ChainError(f"faucet refused: {exc}", code="faucet_failed") from None
            return str(transaction.signatures[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool = False) -> Iterator[None]:
        """The chain for one operation: this process's other threads kept out and, with a
        state directory, other processes too (shared to read, exclusive to write), this
        replica first brought up to what they wrote."""
        with self._lock:
            if self._closed:
                raise ChainUnavailable("the embedded solana-local chain is closed")
            if self._lock_file is None:
                yield
                return
            with self._dir_locked(exclusive=exclusive):
                self._catch_up(exclusive=exclusive)
                yield

    @contextlib.contextmanager
    def _dir_locked(self, *, exclusive: bool) -> Iterator[None]:
        assert self._lock_file is not None
        descriptor = self._lock_file.fileno()
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def _catch_up(self, *, exclusive: bool) -> None:
        """Apply the frames other processes appended since this replica last looked; a
        ledger replaced by another process's compaction is replayed whole."""
        assert self._ledger_path is not None
        try:
            current = os.stat(self._ledger_path)
        except FileNotFoundError:
            raise ChainUnavailable(f"the solana-local ledger {self._ledger_path} is missing",
                                   code="chain_state_corrupt") from None
        if (current.st_dev, current.st_ino) != self._ledger_file_id:
            self._replay(exclusive=exclusive)
        elif current.st_size != self._applied:  # another process wrote
            self._apply_ledger(exclusive=exclusive)

    def _replay(self, *, exclusive: bool) -> None:
        """This replica afresh, from the whole ledger."""
        self._open_ledger()
        self._svm = LiteSVM().with_sigverify(False)
        self._known, self._signatures, self._height = set(), {}, 0
        self._applied = self._snapshot_bytes = 0
        self._apply_ledger(exclusive=exclusive)

    def _apply_ledger(self, *, exclusive: bool) -> None:
        """Apply the ledger's frames past `_applied`, up to a torn or corrupt one (a writer
        died mid-frame: frames are written whole, so everything before it is consistent)."""
        assert self._ledger_path is not None
        with open(self._ledger_path, "rb") as ledger:
            ledger.seek(self._applied)
            raw = ledger.read()
        used = 0
        for payload, end in _frames(raw):
            try:
                updates, signatures, height = _decode_frame(payload)
            except (ValueError, struct.error):
                break
            self._apply_frame(updates, signatures, height)
            used = end
            self._snapshot_bytes = self._snapshot_bytes or end  # the ledger's first frame
        self._applied += used
        if used != len(raw) and exclusive:
            self._cut_torn_tail(len(raw) - used)

    def _apply_frame(self, updates: list[tuple[Pubkey, Account | None]],
                     signatures: list[tuple[Signature, str | None]], height: int | None) -> None:
        for pubkey, account in updates:
            if account is None:
                self._svm.set_account(pubkey, _CLOSED)
                self._known.discard(pubkey)
            else:
                self._svm.set_account(pubkey, account)
                self._known.add(pubkey)
        self._signatures.update(signatures)
        while height is not None and self._height < height:
            self._svm.expire_blockhash()
            self._height += 1

    def _cut_torn_tail(self, torn: int) -> None:
        """Under the exclusive lock no frame is being written: bytes past the last whole
        frame are a dead writer's torn frame, cut before anything is appended after them."""
        assert self._ledger_path is not None
        log.warning("solana-local ledger %s: dropped %d torn bytes", self._ledger_path, torn)
        os.truncate(self._ledger_path, self._applied)

    def _process_locked(self, transaction: Transaction, *, sync: bool = True) -> None:
        signature = transaction.signatures[0]
        if signature in self._signatures:
            raise TxRejected(TransactionErrorFieldless.AlreadyProcessed)
        verified = transaction.verify_with_results()
        if (len(verified) != transaction.message.header.num_required_signatures
                or not all(verified)):
            raise TxRejected(TransactionErrorFieldless.SignatureFailure)
        simulated = self._svm.simulate_transaction(transaction)
        if isinstance(simulated, FailedTransactionMetadata):
            raise TxRejected(simulated.err())
        result = self._svm.send_transaction(transaction)
        # Simulation and execution run under the same lock on the same state, so this can
        # only fail if LiteSVM itself disagrees with its simulation; record it honestly.
        error = (
            stx.describe_error(result.err())
            if isinstance(result, FailedTransactionMetadata)
            else None
        )
        self._signatures[signature] = error
        self._persist(_writable_keys(transaction.message), signature, error, sync=sync)
        # Found by any of its signatures, as its first one: an x402 payment is signed by
        # the session wallet second (a facilitator pays the fee and signs first), and zpay
        # knows only its own signature.
        for other in transaction.signatures[1:]:
            if other not in self._signatures:
                self._signatures[other] = error
                self._tx_ids[other] = signature
                self._persist([], other, error, sync=sync)

    def _persist(
        self, keys: list[Pubkey], signature: Signature | None = None, error: str | None = None,
        *, sync: bool = True,
    ) -> None:
        """Record the current state of `keys` (and the signature) as one ledger frame
        (durable at once, or at the caller's `_sync`)."""
        if self._ledger_path is None:
            return  # in memory only
        entries = [self._account_entry(key) for key in keys]
        if signature is not None:
            entries.append(_signature_entry(signature, error))
        self._append(entries, sync=sync)

    def _account_entry(self, pubkey: Pubkey) -> bytes:
        account = self._svm.get_account(pubkey)
        if account is None or account.lamports == 0:
            self._known.discard(pubkey)
            return _TAG_DELETED + bytes(pubkey)
        self._known.add(pubkey)
        return _account_record(pubkey, account)

    def _append(self, entries: list[bytes], *, sync: bool = True) -> None:
        if self._ledger is None:
            return
        frame = _frame(b"".join(entries))
        # One write per frame: only the tail of the file can ever be torn.
        self._ledger.write(frame)
        if sync:
            self._sync()
        self._applied += len(frame)
        if self._applied > max(_COMPACT_MIN_BYTES, _COMPACT_RATIO * self._snapshot_bytes):
            self._compact()

    def _sync(self) -> None:
        """Everything appended so far, on disk."""
        if self._ledger is None:
            return
        self._ledger.flush()
        if self._fsync:
            os.fsync(self._ledger.fileno())

    def _compact(self) -> None:
        """Replace the ledger by one snapshot frame of the current state, atomically."""
        if self._ledger_path is None:
            return
        entries = [
            _account_record(pubkey, account)
            for pubkey in self._known
            if (account := self._svm.get_account(pubkey)) is not None
        ]
        entries.extend(_signature_entry(sig, err) for sig, err in self._signatures.items())
        entries.append(_height_entry(self._height))
        snapshot = _frame(b"".join(entries))
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        atomic_write(self._ledger_path, snapshot)
        self._open_ledger()
        self._snapshot_bytes = self._applied = len(snapshot)

    def _open_ledger(self) -> None:
        assert self._ledger_path is not None
        if self._ledger is not None:
            self._ledger.close()
        self._ledger = open(self._ledger_path, "ab")  # noqa: SIM115 - held until close()
        opened = os.fstat(self._ledger.fileno())
        self._ledger_file_id = (opened.st_dev, opened.st_ino)

    def _genesis(self) -> None:
        self._instance_id = str(uuid.uuid4())
        self._fee_payer = Keypair()
        self._faucet = Keypair()
        self._airdrop_fee_payer()

    def _airdrop_fee_payer(self) -> None:
        result = self._svm.airdrop(self._fee_payer.pubkey(), _FEE_PAYER_AIRDROP_LAMPORTS)
        if isinstance(result, FailedTransactionMetadata):
            raise ChainUnavailable("solana-local could not fund its fee payer")
        self._persist([self._fee_payer.pubkey()])

    def _ensure_fee_payer_funded(self) -> None:
        balance = self._svm.get_balance(self._fee_payer.pubkey()) or 0
        if balance < _FEE_PAYER_LOW_LAMPORTS:
            self._airdrop_fee_payer()

    def _ensure_mints(self, tokens: Mapping[str, int]) -> None:
        created = False
        for symbol, decimals in tokens.items():
            if symbol in self._mints:
                if self._mints[symbol][1] != decimals:
                    raise ChainError(
                        f"solana-local mint {symbol} has {self._mints[symbol][1]} decimals, "
                        f"the network spec says {decimals}",
                        code="invalid_config",
                    )
                continue
            mint = Keypair()
            transaction = stx.build_create_mint(
                fee_payer=self._fee_payer,
                mint=mint,
                mint_authority=self._faucet.pubkey(),
                decimals=decimals,
                rent_lamports=self._svm.minimum_balance_for_rent_exemption(MINT_LEN),
                recent_blockhash=self._svm.latest_blockhash(),
            )
            self._process_locked(transaction)
            self._mints[symbol] = (mint.pubkey(), decimals)
            created = True
        if created and self._state_dir is not None:
            self._write_state(self._state_dir)

    # ---------------------------------------------------------------- persistence

    def _write_state(self, state_dir: Path) -> None:
        document = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "instance_id": self._instance_id,
            "fee_payer_secret": bytes(self._fee_payer).hex(),
            "faucet_secret": bytes(self._faucet).hex(),
            "mints": {
                symbol: {"address": str(mint), "decimals": decimals}
                for symbol, (mint, decimals) in self._mints.items()
            },
        }
        atomic_write(state_dir / STATE_FILE, json.dumps(document, indent=2).encode())

    def _load(self, state_dir: Path) -> None:
        try:
            document: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
            if document.get("format") != _STATE_FORMAT or document.get("version") != _STATE_VERSION:
                raise ValueError("format")
            self._instance_id = str(document["instance_id"])
            self._fee_payer = Keypair.from_bytes(bytes.fromhex(document["fee_payer_secret"]))
            self._faucet = Keypair.from_bytes(bytes.fromhex(document["faucet_secret"]))
            self._mints = {
                str(symbol): (Pubkey.from_string(m["address"]), int(m["decimals"]))
                for symbol, m in dict(document["mints"]).items()
            }
        except (OSError, KeyError, TypeError, ValueError):
            # `from None`: the document holds secrets; no parser message should echo it.
            raise ChainUnavailable(
                f"the solana-local state in {state_dir} is unreadable", code="chain_state_corrupt"
            ) from None
        ledger = state_dir / LEDGER_FILE
        if not ledger.exists():
            raise ChainUnavailable(
                f"the solana-local ledger in {state_dir} is missing", code="chain_state_corrupt"
            )
        self._replay(exclusive=True)
        log.info(
            "solana-local %s loaded: %d accounts, %d transactions",
            self._instance_id,
            len(self._known),
            len(self._signatures),
        )


class LocalBackend:
    """`SolanaBackend` over a LocalChain: every send is final at once."""

    poll_interval_s = 0.0

    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
        self._sends: list[tuple[Transaction, asyncio.Future[Exception | None]]] = []

    async def latest_blockhash(self) -> RecentBlockhash:
        return self.chain.latest_blockhash()

    async def is_blockhash_valid(self, blockhash: Hash) -> bool:
        return self.chain.is_blockhash_valid(blockhash)

    async def block_height(self) -> int:
        # A blockhash issued at height h is valid while the height is h (LiteSVM accepts
        # only its latest blockhash).
        return self.chain.latest_blockhash().last_valid_block_height

    async def send(self, transaction: Transaction) -> None:
        """Sends made in one turn of the event loop go to the chain together, durable
        with one fsync (`LocalChain.process_many`); each is answered with its own outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Exception | None] = loop.create_future()
        self._sends.append((transaction, future))
        if len(self._sends) == 1:
            loop.call_soon(self._send_all)
        outcome = await future
        if outcome is not None:
            raise outcome

    def _send_all(self) -> None:
        sends, self._sends = self._sends, []
        try:
            outcomes = self.chain.process_many([transaction for transaction, _ in sends])
        except Exception as exc:  # the chain closed, or its ledger could not be written
            outcomes = [exc] * len(sends)
        for (_, future), outcome in zip(sends, outcomes, strict=True):
            if not future.done():  # its request may be gone; the transaction went anyway
                future.set_result(outcome)

    async def signature_status(self, signature: Signature) -> TransferStatus:
        return self.chain.signature_status(signature)

    async def get_account(self, pubkey: Pubkey) -> Account | None:
        return self.chain.get_account(pubkey)

    async def genesis_id(self) -> str:
        return self.chain.instance_id

    async def close(self) -> None:
        self.chain.close()


# --------------------------------------------------------------------------- ledger format


def _writable_keys(message: Message) -> list[Pubkey]:
    """Accounts a legacy message may write; only these can change when it executes."""
    header = message.header
    keys = list(message.account_keys)
    signed = header.num_required_signatures
    signed_writable = signed - header.num_readonly_signed_accounts
    unsigned_writable_end = len(keys) - header.num_readonly_unsigned_accounts
    return keys[:signed_writable] + keys[signed:unsigned_writable_end]


def _frame(payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _account_record(pubkey: Pubkey, account: Account) -> bytes:
    data = bytes(account)
    return _TAG_ACCOUNT + bytes(pubkey) + struct.pack("<I", len(data)) + data


def _signature_entry(signature: Signature, error: str | None) -> bytes:
    text = (error or "").encode("utf-8")[:0xFFFF]
    return _TAG_SIGNATURE + bytes(signature) + struct.pack("<BH", error is None, len(text)) + text


def _height_entry(height: int) -> bytes:
    return _TAG_HEIGHT + struct.pack("<Q", height)


def _frames(raw: bytes) -> Iterator[tuple[bytes, int]]:
    """(payload, offset past it) of each whole frame, up to the first torn or corrupt one."""
    offset = 0
    while offset + _FRAME_HEADER.size <= len(raw):
        length, crc = _FRAME_HEADER.unpack_from(raw, offset)
        start = offset + _FRAME_HEADER.size
        payload = raw[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return
        offset = start + length
        yield payload, offset


def _decode_frame(
    payload: bytes,
) -> tuple[list[tuple[Pubkey, Account | None]], list[tuple[Signature, str | None]], int | None]:
    """One frame's account updates (None: closed), signatures and blockhash height, decoded
    whole before anything is applied, so a bad frame changes nothing."""
    updates: list[tuple[Pubkey, Account | None]] = []
    new_signatures: list[tuple[Signature, str | None]] = []
    height: int | None = None
    i = 0
    while i < len(payload):
        tag = payload[i : i + 1]
        i += 1
        if tag == _TAG_ACCOUNT:
            pubkey = Pubkey.from_bytes(payload[i : i + 32])
            (size,) = struct.unpack_from("<I", payload, i + 32)
            data = payload[i + 36 : i + 36 + size]
            if len(data) != size:
                raise ValueError("truncated account")
            updates.append((pubkey, Account.from_bytes(data)))
            i += 36 + size
        elif tag == _TAG_DELETED:
            updates.append((Pubkey.from_bytes(payload[i : i + 32]), None))
            i += 32
        elif tag == _TAG_SIGNATURE:
            signature = Signature.from_bytes(payload[i : i + 64])
            ok, size = struct.unpack_from("<BH", payload, i + 64)
            text = payload[i + 67 : i + 67 + size].decode("utf-8")
            new_signatures.append((signature, None if ok else text))
            i += 67 + size
        elif tag == _TAG_HEIGHT:
            (height,) = struct.unpack_from("<Q", payload, i)
            i += 8
        else:
            raise ValueError("unknown ledger entry")
    return updates, new_signatures, height
