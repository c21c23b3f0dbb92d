"""The EVM relayer: the platform account that pays gas for every token movement.

Relayer nonces are allocated from a local counter under an asyncio lock (no duplicates,
no gaps from our side), initialised from the pending transaction count and re-synced
from the chain when the node reports a nonce error. Every relayer transaction is kept
(raw) until mined; a transaction the node dropped is re-broadcast, or its nonce filled by
a no-op, so one lost transaction cannot stall all that follow.

Also here, because `evm` and `evm_local` both build on this module (it imports neither at
run time): the translation of web3 and transport errors into `ChainError`s, two small
encoding helpers and the relayer key's text format. web3 types and errors never leave the
EVM modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
)

from zpay.chains import evm_tx
from zpay.chains.protocol import ChainError, ChainUnavailable

if TYPE_CHECKING:
    from zpay.chains.evm import EvmAdapter

__all__ = [
    "KNOWN_ERRORS",
    "NONCE_ERRORS",
    "Relayer",
    "SentTx",
    "decode_key",
    "rpc_message",
    "to_hex",
    "translated",
    "with_headroom",
]

log = logging.getLogger(__name__)

NONCE_ERRORS = ("nonce too low", "invalid nonce", "nonce has already been used", "oldnonce")
KNOWN_ERRORS = ("already known", "known transaction", "alreadyknown")
_REPLACEMENT_ERRORS = ("replacement transaction underpriced", "replacement fee too low")


# ----------------------------------------------------------------- error translation


def rpc_message(exc: Web3RPCError) -> str:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(exc.message)


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Library and transport errors become ChainErrors; ours pass through untouched."""
    try:
        yield
    except ChainError:
        raise
    except ContractLogicError as exc:
        raise ChainError(f"{action}: reverted: {exc.message or exc}", code="reverted") from exc
    except Web3RPCError as exc:
        raise ChainUnavailable(f"{action}: node error: {rpc_message(exc)}") from exc
    except (TimeExhausted, TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ChainUnavailable(f"{action}: {type(exc).__name__}: {exc}") from exc
    except Web3Exception as exc:
        raise ChainError(f"{action}: {type(exc).__name__}: {exc}") from exc


def to_hex(value: Any) -> str:
    raw = bytes(value)
    return "0x" + raw.hex()


def with_headroom(gas: int, percent: int) -> int:
    return gas + gas * percent // 100


# ------------------------------------------------------------------- relayer nonces


@dataclass(frozen=True)
class SentTx:
    nonce: int
    tx_hash: str
    raw: bytes
    # What was signed, so a stuck transaction can be re-signed with higher fees.
    to: str | None
    data: bytes
    gas: int
    value: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    sent_at: float  # time.monotonic()
    key: str | None  # the authorization it carries ("<from>:<nonce>"), if any


class Relayer:
    """The platform account that pays gas; owns the nonce counter."""

    def __init__(self, adapter: EvmAdapter, secret: bytes) -> None:
        self._adapter = adapter
        self._secret = secret
        self.address = evm_tx.address_of(secret)
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self._inflight: dict[int, SentTx] = {}

    async def chain_nonce(self, block: str) -> int:
        with translated("read relayer nonce"):
            return int(
                await self._adapter._w3.eth.get_transaction_count(
                    cast(Any, self.address), cast(Any, block)
                )
            )

    def _sign(
        self,
        *,
        nonce: int,
        to: str | None,
        data: bytes,
        gas: int,
        value: int,
        max_fee: int,
        priority_fee: int,
        key: str | None,
    ) -> SentTx:
        raw, tx_hash = evm_tx.sign_relayer_transaction(
            self._secret,
            chain_id=self._adapter.chain_id,
            nonce=nonce,
            to=to,
            data=data,
            gas=gas,
            value=value,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority_fee,
        )
        return SentTx(
            nonce, tx_hash, raw, to, data, gas, value, max_fee, priority_fee, time.monotonic(), key
        )

    async def send(
        self, *, to: str | None, data: bytes, gas: int, value: int = 0, key: str | None = None
    ) -> SentTx:
        """Sign with the next nonce and broadcast; the nonce is consumed only when the
        node took the transaction (or may have: a timeout keeps it, heal() settles it).
        `key` names the authorization carried, recorded before the lock is released so a
        concurrent status query already sees the transaction."""
        max_fee, priority_fee = await self._adapter._fees()
        async with self._lock:
            for _attempt in range(4):
                if self._next_nonce is None:
                    self._next_nonce = await self.chain_nonce("pending")
                nonce = self._next_nonce
                sent = self._sign(
                    nonce=nonce,
                    to=to,
                    data=data,
                    gas=gas,
                    value=value,
                    max_fee=max_fee,
                    priority_fee=priority_fee,
                    key=key,
                )
                raw = sent.raw
                try:
                    await self._adapter._w3.eth.send_raw_transaction(raw)
                except Web3RPCError as exc:
                    message = rpc_message(exc).lower()
                    if any(m in message for m in KNOWN_ERRORS):
                        pass  # our own bytes reached the node before: it is sent
                    elif any(m in message for m in (*NONCE_ERRORS, *_REPLACEMENT_ERRORS)):
                        # Someone else used the key, or the node restarted with another
                        # view: the chain is the truth, take its count and sign again.
                        log.warning("relayer nonce %s refused (%s); resyncing", nonce, message)
                        self._next_nonce = await self.chain_nonce("pending")
                        if self._next_nonce <= nonce:
                            self._next_nonce = nonce + 1
                        continue
                    elif "insufficient funds" in message:
                        raise ChainUnavailable(
                            f"the relayer {self.address} needs ETH for gas: {message}",
                            code="relayer_unfunded",
                        ) from exc
                    else:
                        raise ChainUnavailable(f"relayer transaction refused: {message}") from exc
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    # The node may or may not have it: keep the nonce taken and the raw tx,
                    # heal() re-broadcasts it if the node never saw it.
                    self._record(sent)
                    raise ChainUnavailable(f"relayer broadcast: {type(exc).__name__}") from exc
                self._record(sent)
                return sent
        raise ChainUnavailable("relayer nonce kept colliding; another process uses the key")

    def _record(self, sent: SentTx) -> None:
        self._inflight[sent.nonce] = sent
        self._next_nonce = sent.nonce + 1
        if sent.key is not None:
            self._adapter._remember(sent.key, sent.tx_hash)

    async def heal(self) -> None:
        """Keep the relayer's queue moving. Lowest nonce first: a transaction the node
        no longer knows is re-broadcast (or, if it can no longer be accepted, its nonce is
        filled with a 0-value self-transfer); the oldest unmined one, if stuck longer than
        `stuck_after_s` (fees rose past its cap), is replaced with higher fees."""
        async with self._lock:
            mined = await self.chain_nonce("latest")
            for nonce in [n for n in self._inflight if n < mined]:
                del self._inflight[nonce]
            for nonce in sorted(self._inflight):
                sent = self._inflight[nonce]
                if await self._adapter._tx_known(sent.tx_hash):
                    if (
                        nonce == mined
                        and time.monotonic() - sent.sent_at > self._adapter._options.stuck_after_s
                    ):
                        await self._bump(sent)
                    continue
                log.warning(
                    "relayer tx %s (nonce %s) was dropped; re-broadcasting", sent.tx_hash, nonce
                )
                try:
                    with translated("re-broadcast relayer tx"):
                        await self._adapter._w3.eth.send_raw_transaction(sent.raw)
                    continue
                except ChainError as exc:
                    message = str(exc).lower()
                    if any(m in message for m in (*KNOWN_ERRORS, *NONCE_ERRORS)):
                        continue  # known again, or that nonce got mined meanwhile
                # Typically evicted because fees rose past its cap: the same call with
                # current fees; failing that, a no-op so the queue behind it moves.
                if not await self._bump(sent):
                    await self._fill(nonce)
            pending = await self.chain_nonce("pending")
            if self._next_nonce is None or pending > self._next_nonce:
                self._next_nonce = pending

    async def _fill(self, nonce: int) -> None:
        max_fee, priority_fee = await self._adapter._fees(urgent=True)
        filler = self._sign(
            nonce=nonce,
            to=self.address,
            data=b"",
            gas=evm_tx.NATIVE_TRANSFER_GAS,
            value=0,
            max_fee=max_fee,
            priority_fee=priority_fee,
            key=None,
        )
        try:
            with translated("fill relayer nonce"):
                await self._adapter._w3.eth.send_raw_transaction(filler.raw)
        except ChainError as exc:
            log.warning("could not fill relayer nonce %s: %s", nonce, exc)
            return
        self._inflight[nonce] = filler

    async def _bump(self, stuck: SentTx) -> bool:
        """Replace a stuck transaction (same nonce, same call) with fees at least 12.5%
        higher — the minimum bump nodes accept for a replacement."""
        max_fee, priority_fee = await self._adapter._fees(urgent=True)
        bumped = self._sign(
            nonce=stuck.nonce,
            to=stuck.to,
            data=stuck.data,
            gas=stuck.gas,
            value=stuck.value,
            max_fee=max(max_fee, stuck.max_fee_per_gas * 9 // 8 + 1),
            priority_fee=max(priority_fee, stuck.max_priority_fee_per_gas * 9 // 8 + 1),
            key=stuck.key,
        )
        log.warning(
            "relayer tx %s (nonce %s) not getting mined; replacing it with higher fees as %s",
            stuck.tx_hash,
            stuck.nonce,
            bumped.tx_hash,
        )
        try:
            with translated("replace stuck relayer tx"):
                await self._adapter._w3.eth.send_raw_transaction(bumped.raw)
        except ChainError as exc:
            log.warning("could not replace relayer tx %s: %s", stuck.tx_hash, exc)
            return False
        self._inflight[stuck.nonce] = bumped
        if bumped.key is not None:
            self._adapter._remember(bumped.key, bumped.tx_hash)
        return True


# ------------------------------------------------------------------------- adapter


# ---------------------------------------------------------------------- relayer key


def decode_key(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise ChainError("the EVM relayer key must be 32 bytes of hex") from None
    evm_tx.address_of(secret)  # validates length and range, without echoing the key
    return secret
