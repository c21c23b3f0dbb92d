"""The EVM relayer: the platform account that pays gas for every token movement.

One relayer key is shared by every API replica and worker, so nothing about it is kept in
process memory: nonces are allocated, and transactions signed and broadcast, inside a slot
of the `RelayerJournal` (a lock for the whole deployment), and every transaction the node
took is recorded there with its raw bytes. Any process can therefore:

- send without nonce collisions: the next nonce is the journal's, or the node's pending
  count if that is higher (someone used the key outside zpay);
- relay an authorization at most once at a time: under the lock, if an outstanding
  transaction carrying the same authorization is still on the node (or can be put back),
  nothing new is sent; if the authorization is already used, neither;
- heal: a transaction the node dropped is re-broadcast (or re-signed with current fees,
  or its nonce filled with a no-op so the queue behind it moves), and one stuck at the
  head of the queue is replaced with higher fees.

"nonce too low" is never read as "mined": it says some transaction used that nonce, so
the journal entry is settled and the chain (authorizationState) says what happened to
the authorization.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zpay.chains import evm_tx
from zpay.chains.evm_node import (
    Broadcast,
    BroadcastRefused,
    BroadcastUncertain,
    EvmNode,
    redact,
    rpc_message,
    to_hex,
    translated,
    with_headroom,
)
from zpay.chains.evm_refs import authorization_key
from zpay.chains.protocol import ChainError, ChainUnavailable, TransferFailed
from zpay.chains.relayer_journal import OutstandingTx, RelayerJournal, RelayerSlot

__all__ = [
    "Relayer",
    "SentTx",
    "decode_key",
    "redact",
    "rpc_message",
    "to_hex",
    "translated",
    "with_headroom",
]

log = logging.getLogger(__name__)

SentTx = OutstandingTx  # what `send` returns (its `tx_hash` is what callers use)
_SEND_ATTEMPTS = 4
_MAX_RELAY_BATCH = 32  # relays per slot: bounds how long one holds the deployment's lock


class _Fate(enum.Enum):
    """What became of an outstanding transaction the relayer looked after."""

    ALIVE = "alive"  # the node has it (or its replacement), or may have it
    NONCE_USED = "nonce_used"  # its nonce was used: by it or another, the chain says
    FILLED = "filled"  # could not be put back: its nonce now carries a no-op


@dataclass(frozen=True)
class _Relay:
    """An authorization waiting to be relayed in this process's next slot."""

    token: str
    signed: evm_tx.SignedAuthorization
    gas: int
    done: asyncio.Future[str | None]


def _retrieved(future: asyncio.Future[str | None]) -> None:
    if not future.cancelled():
        future.exception()


class Relayer:
    """The platform account that pays gas, journaled in `journal` under `chain`."""

    def __init__(
        self,
        node: EvmNode,
        journal: RelayerJournal,
        secret: bytes,
        *,
        chain: str,
        chain_id: int,
        stuck_after_s: float,
    ) -> None:
        self._node = node
        self._journal = journal
        self._secret = secret
        self._chain = chain
        self._chain_id = chain_id
        self._stuck_after = timedelta(seconds=stuck_after_s)
        self.address = evm_tx.address_of(secret)
        self._relays: list[_Relay] = []  # waiting for this process's next slot
        self._relaying: asyncio.Task[None] | None = None

    def journal_as(self, chain: str) -> None:
        """Journal under `chain` from now on: a local chain names its instance, so a chain
        restarted empty never inherits (or re-broadcasts) the transactions of the one
        before it."""
        self._chain = chain

    async def chain_nonce(self, block: int | str) -> int:
        return await self._node.nonce(self.address, block)

    # ----------------------------------------------------------------------- send

    async def send(
        self, *, to: str | None, data: bytes, gas: int, value: int = 0, key: str | None = None
    ) -> SentTx:
        """Sign with the next nonce and broadcast (faucet, deployments). Raises
        ChainUnavailable if the node refused it, or may not have it (then the journal
        keeps it and heal() settles it)."""
        fees = await self._node.fees()
        async with self._journal.slot(self._chain, self.address) as slot:
            sent, error = await self._send_new(slot, to, data, gas, value, fees, key)
        if error is not None:
            raise error
        assert sent is not None
        return sent

    async def submit_authorization(
        self,
        *,
        token: str,
        signed: evm_tx.SignedAuthorization,
        expiry_margin_s: int,
        gas_headroom_percent: int,
    ) -> str | None:
        """`relay` after the checks that spare gas: nothing if the authorization is used;
        TransferFailed (nothing sent) if it would expire before a relayer tx could be
        mined, or would revert."""
        auth = signed.authorization
        if await self._node.authorization_used(token, auth.from_address, auth.nonce, "latest"):
            return None
        if await self._node.chain_now_s() + expiry_margin_s >= auth.valid_before:
            raise TransferFailed(
                "the authorization expires before a relayer tx could be mined; nothing sent",
                code="expires_too_soon",
            )
        data = evm_tx.encode_transfer_with_authorization(signed)
        try:
            gas = await self._node.estimate_gas(sender=self.address, to=token, data=data)
        except ChainError as exc:
            if exc.code != "reverted":
                raise
            if await self._node.authorization_used(token, auth.from_address, auth.nonce, "latest"):
                return None
            raise TransferFailed(f"the transfer would revert, nothing was sent: {exc}") from exc
        gas = with_headroom(gas, gas_headroom_percent)
        return await self.relay(token=token, signed=signed, gas=gas)

    async def relay(
        self, *, token: str, signed: evm_tx.SignedAuthorization, gas: int
    ) -> str | None:
        """Relay `transferWithAuthorization(signed)` unless the authorization is already
        used or an outstanding relayer transaction carries it: the new transaction's hash,
        or None when nothing new was needed.

        The journal's slot is the deployment's one queue for this relayer, so relays of
        this process share slots: whatever queued while one was held goes out in the next
        (one lock, one block and nonce read for all). A slot per transaction held the lock
        for five node calls and a database transaction each: on a loaded machine that
        capped a relayer at ~15 payments a second whatever the block size."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)  # also when the caller has gone
        self._relays.append(_Relay(token, signed, gas, done))
        if self._relaying is None or self._relaying.done():
            self._relaying = asyncio.create_task(self._relay_queued())
        # Shielded: a caller that gives up leaves its transaction to be sent and journaled.
        return await asyncio.shield(done)

    async def _relay_queued(self) -> None:
        while self._relays:
            batch = self._relays[:_MAX_RELAY_BATCH]
            del self._relays[:_MAX_RELAY_BATCH]
            try:
                results = await self._relay_batch(batch)
            except Exception as exc:  # the slot itself failed: nothing was journaled
                results = [exc] * len(batch)
            except BaseException:
                for relay in [*batch, *self._relays]:
                    if not relay.done.done():
                        relay.done.set_exception(ChainUnavailable("the relayer stopped"))
                self._relays.clear()
                raise
            for relay, result in zip(batch, results, strict=True):
                if relay.done.done():
                    continue
                if isinstance(result, Exception):
                    relay.done.set_exception(result)
                else:
                    relay.done.set_result(result)

    async def _relay_batch(self, batch: list[_Relay]) -> list[str | Exception | None]:
        fees = await self._node.fees()
        async with self._journal.slot(self._chain, self.address) as slot:
            # One block for both reads: a transaction mined before it is settled in the
            # journal AND shows in authorizationState; one mined after is still on the node.
            block = await self._node.block_number()
            await slot.settle_below(await self.chain_nonce(block))
            pending = await self.chain_nonce("pending")
            used = await asyncio.gather(
                *(
                    self._node.authorization_used(
                        r.token, r.signed.authorization.from_address,
                        r.signed.authorization.nonce, block,
                    )
                    for r in batch
                ),
                return_exceptions=True,
            )
            results: list[str | Exception | None] = []
            for relay, is_used in zip(batch, used, strict=True):
                try:
                    if isinstance(is_used, BaseException):
                        raise is_used
                    results.append(
                        None if is_used else await self._relay_unused(slot, relay, fees, pending)
                    )
                except Exception as exc:  # its caller's alone: what went before stays journaled
                    results.append(exc)
        return results

    async def _relay_unused(
        self, slot: RelayerSlot, relay: _Relay, fees: tuple[int, int], pending: int
    ) -> str | None:
        auth = relay.signed.authorization
        key = authorization_key(auth.from_address, auth.nonce)
        for tx in slot.for_authorization(key):
            if await self._keep_alive(slot, tx) is not _Fate.FILLED:
                # On the node, or its nonce just got used — most likely by it (a node
                # may briefly know a transaction it is mining neither as pending nor
                # as mined): another one could only duplicate it. The chain will say;
                # if it did not land, the status is UNKNOWN and a later submit sends.
                return None
        data = evm_tx.encode_transfer_with_authorization(relay.signed)
        sent, error = await self._send_new(slot, relay.token, data, relay.gas, 0, fees, key,
                                           pending=pending)
        if error is not None:
            raise error
        return sent.tx_hash if sent is not None else None

    async def journaled(self) -> list[OutstandingTx]:
        """Everything the journal holds for this relayer (lock-free)."""
        return await self._journal.outstanding(self._chain, self.address)

    async def outstanding(self, authorization: str, *, mined_at: int) -> list[OutstandingTx]:
        """Journaled transactions carrying `authorization` that were not mined by block
        `mined_at` (lock-free; for status)."""
        txs = await self._journal.outstanding(
            self._chain, self.address, authorization=authorization
        )
        if not txs:
            return []
        mined = await self.chain_nonce(mined_at)
        return [tx for tx in txs if tx.nonce >= mined]

    async def _send_new(
        self,
        slot: RelayerSlot,
        to: str | None,
        data: bytes,
        gas: int,
        value: int,
        fees: tuple[int, int],
        key: str | None,
        *,
        pending: int | None = None,
    ) -> tuple[OutstandingTx | None, ChainError | None]:
        """`pending`: the node's pending nonce count, if just read (a batch reads it once:
        the journal's next nonce covers what the batch itself sent since)."""
        if pending is None:
            pending = await self.chain_nonce("pending")
        nonce = pending if slot.next_nonce is None else max(slot.next_nonce, pending)
        for _attempt in range(_SEND_ATTEMPTS):
            tx = self._sign(nonce, to, data, gas, value, fees, key)
            try:
                outcome = await self._node.broadcast(tx.raw)
            except BroadcastUncertain as exc:
                await slot.record(tx)  # may be on the node: heal() re-broadcasts if not
                return None, ChainUnavailable(f"relayer broadcast: {exc}")
            except BroadcastRefused as exc:
                if exc.insufficient_funds:
                    return None, ChainUnavailable(
                        f"the relayer {self.address} needs ETH for gas: {exc.reason}",
                        code="relayer_unfunded",
                    )
                return None, ChainUnavailable(f"relayer transaction refused: {exc.reason}")
            if outcome in (Broadcast.SENT, Broadcast.KNOWN):
                await slot.record(tx)
                return tx, None
            # The nonce is taken by a transaction the journal does not know (the key used
            # outside zpay, or a journal that was reset): take the next one.
            log.warning("relayer nonce %s is taken (%s); trying the next", nonce, outcome.value)
            nonce = max(nonce + 1, await self.chain_nonce("pending"))
        return None, ChainUnavailable("relayer nonces kept colliding: is the key used elsewhere?")

    def _sign(
        self,
        nonce: int,
        to: str | None,
        data: bytes,
        gas: int,
        value: int,
        fees: tuple[int, int],
        key: str | None,
    ) -> OutstandingTx:
        max_fee, priority_fee = fees
        raw, tx_hash = evm_tx.sign_relayer_transaction(
            self._secret,
            chain_id=self._chain_id,
            nonce=nonce,
            to=to,
            data=data,
            gas=gas,
            value=value,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority_fee,
        )
        return OutstandingTx(nonce, tx_hash, raw, max_fee, priority_fee, key, datetime.now(UTC))

    # ----------------------------------------------------------------------- heal

    async def heal(self) -> None:
        """Keep the relayer's queue moving (any process can). Takes the lock only when the
        journal holds something to settle, re-broadcast or replace."""
        mined = await self.chain_nonce("latest")
        pending = await self.chain_nonce("pending")
        txs = await self._journal.outstanding(self._chain, self.address)
        if not any(tx.nonce < mined or self._needs_care(tx, mined, pending) for tx in txs):
            return
        async with self._journal.slot(self._chain, self.address) as slot:
            mined = await self.chain_nonce("latest")
            pending = await self.chain_nonce("pending")
            await slot.settle_below(mined)
            for tx in slot.outstanding():
                try:
                    if tx.nonce < pending:  # the node holds a transaction with this nonce
                        if self._needs_care(tx, mined, pending):
                            await self._bump(slot, tx)
                        continue
                    await self._keep_alive(slot, tx)
                except ChainUnavailable as exc:
                    # Keep (commit) what was replaced so far; the next heal goes on.
                    log.warning("relayer heal stopped at nonce %s: %s", tx.nonce, exc)
                    break

    def _needs_care(self, tx: OutstandingTx, mined: int, pending: int) -> bool:
        """Missing from the node, or stuck at the head of the queue for too long."""
        if tx.nonce >= pending:
            return True
        return tx.nonce == mined and datetime.now(UTC) - tx.sent_at > self._stuck_after

    async def _keep_alive(self, slot: RelayerSlot, tx: OutstandingTx) -> _Fate:
        """Make sure the node has `tx` (or its replacement)."""
        if await self._node.tx_known(tx.tx_hash):
            return _Fate.ALIVE
        try:
            outcome = await self._node.broadcast(tx.raw)
        except BroadcastUncertain:
            return _Fate.ALIVE  # maybe on the node now; the next heal looks again
        except BroadcastRefused as exc:
            log.warning(
                "relayer tx %s (nonce %s) refused again: %s", tx.tx_hash, tx.nonce, exc.reason
            )
            outcome = Broadcast.UNDERPRICED
        if outcome in (Broadcast.SENT, Broadcast.KNOWN):
            if outcome is Broadcast.SENT:
                log.warning(
                    "relayer tx %s (nonce %s) was dropped; re-broadcast it", tx.tx_hash, tx.nonce
                )
            return _Fate.ALIVE
        if outcome is Broadcast.NONCE_USED:
            return _Fate.NONCE_USED  # not "mined": by it or by another, the chain says
        # Typically evicted because fees rose past its cap: the same call with current
        # fees; failing that, a no-op so the queue behind it moves.
        if await self._bump(slot, tx):
            return _Fate.ALIVE
        await self._fill(slot, tx.nonce)
        return _Fate.FILLED

    async def _bump(self, slot: RelayerSlot, stuck: OutstandingTx) -> bool:
        """Replace `stuck` (same nonce, same call) with fees at least 12.5% higher — the
        minimum bump nodes accept for a replacement."""
        try:
            call = evm_tx.decode_signed_transaction(stuck.raw)
        except ChainError:
            return False
        max_fee, priority_fee = await self._node.fees(urgent=True)
        fees = (
            max(max_fee, stuck.max_fee_per_gas * 9 // 8 + 1),
            max(priority_fee, stuck.max_priority_fee_per_gas * 9 // 8 + 1),
        )
        bumped = self._sign(
            stuck.nonce, call.to, call.data, call.gas, call.value, fees, stuck.authorization
        )
        if await self._replace(slot, bumped):
            log.warning(
                "relayer tx %s (nonce %s) replaced with higher fees by %s",
                stuck.tx_hash,
                stuck.nonce,
                bumped.tx_hash,
            )
            return True
        return False

    async def _fill(self, slot: RelayerSlot, nonce: int) -> None:
        fees = await self._node.fees(urgent=True)
        filler = self._sign(nonce, self.address, b"", evm_tx.NATIVE_TRANSFER_GAS, 0, fees, None)
        if await self._replace(slot, filler):
            log.warning("relayer nonce %s filled with a no-op (%s)", nonce, filler.tx_hash)

    async def _replace(self, slot: RelayerSlot, tx: OutstandingTx) -> bool:
        try:
            outcome = await self._node.broadcast(tx.raw)
        except BroadcastUncertain:
            outcome = Broadcast.SENT  # may be there: journal it, heal looks again
        except BroadcastRefused as exc:
            log.warning("relayer nonce %s: replacement refused: %s", tx.nonce, exc.reason)
            return False
        if outcome in (Broadcast.SENT, Broadcast.KNOWN):
            await slot.record(tx)
            return True
        return False


# ---------------------------------------------------------------------- relayer key


def decode_key(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise ChainError("the EVM relayer key must be 32 bytes of hex") from None
    evm_tx.address_of(secret)  # validates length and range, without echoing the key
    return secret
