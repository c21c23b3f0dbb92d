"""The EVM node: every JSON-RPC call the EVM family makes, bounded and translated.

The leaf of the EVM modules (it imports none of them but the pure `evm_tx`): the relayer,
status, approvals and local set-up all talk to the node through `EvmNode`.

- Every single request is bounded by `request_timeout_s` (asyncio timeout around the HTTP
  call, plus aiohttp's own), and web3's automatic retries are off: a frozen node costs one
  bounded request, not web3's 5 attempts of 30 s each.
- Library and transport errors become `ChainError`s here (`translated`); their prose never
  carries the RPC URL, which for hosted nodes holds an API key.
- `broadcast` sorts a node's answer to a raw transaction into what the callers act on
  (sent, already known, nonce already used, fees too low), so no caller parses messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import RPCEndpoint

from zpay.chains import evm_tx
from zpay.chains.protocol import ChainError, ChainUnavailable
from zpay.chains.redaction import redact, redact_url

__all__ = [
    "Block",
    "Broadcast",
    "BroadcastRefused",
    "BroadcastUncertain",
    "EvmNode",
    "NodeError",
    "redact",
    "redact_url",
    "rpc_message",
    "to_hex",
    "translated",
    "with_headroom",
]

KNOWN_ERRORS = ("already known", "known transaction", "alreadyknown", "already imported")
NONCE_ERRORS = ("nonce too low", "nonce has already been used", "oldnonce", "invalid nonce")
UNDERPRICED_ERRORS = (
    "replacement transaction underpriced",
    "replacement fee too low",
    "underpriced",
    "less than block base fee",
    "fee cap less than",
    "fee too low",
)
INSUFFICIENT_FUNDS = "insufficient funds"

RequestObserver = Callable[[str], Awaitable[None]]
_CONNECTIONS = 64  # kept-alive connections to one node, per event loop


# ----------------------------------------------------------------- error translation


def rpc_message(exc: Web3RPCError) -> str:
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return redact(str(error["message"]))
    return redact(str(exc.message))


def _transport(action: str, exc: BaseException) -> ChainUnavailable:
    if isinstance(exc, TimeoutError | TimeExhausted):
        return ChainUnavailable(f"{action}: the node did not answer in time")
    return ChainUnavailable(f"{action}: {type(exc).__name__}: {redact(str(exc))}")


class NodeError(ChainUnavailable):
    """The node answered with a JSON-RPC error (rather than not answering)."""


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Library and transport errors become ChainErrors; ours pass through untouched.
    Transport errors are not chained (`from None`): aiohttp's carry the URL."""
    try:
        yield
    except ChainError:
        raise
    except ContractLogicError as exc:
        message = redact(str(exc.message or exc))
        raise ChainError(f"{action}: reverted: {message}", code="reverted") from exc
    except Web3RPCError as exc:
        raise NodeError(f"{action}: node error: {rpc_message(exc)}") from exc
    except (TimeExhausted, TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _transport(action, exc) from None
    except Web3Exception as exc:
        raise ChainError(f"{action}: {type(exc).__name__}: {redact(str(exc))}") from None


def to_hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def with_headroom(gas: int, percent: int) -> int:
    return gas + gas * percent // 100


# ---------------------------------------------------------------------- provider


class _BoundedProvider(AsyncHTTPProvider):
    """web3's HTTP provider without retries, each request bounded by `timeout_s`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(
            url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
            exception_retry_configuration=None,
        )
        self.timeout_s = timeout_s
        self.observer: RequestObserver | None = None
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        # Not web3's session manager: it takes a thread lock through a thread pool on
        # every request and closes each connection after one (force_close) — a thread hop
        # and a TCP handshake per call were most of what a busy relayer spent. One
        # kept-alive session per event loop instead.
        async with asyncio.timeout(self.timeout_s):
            async with self._session().post(
                str(self.endpoint_uri), data=request_data, **self.get_request_kwargs()
            ) as response:
                response.raise_for_status()
                raw = await response.read()
        if self.observer is not None:
            await self.observer(str(method))
        return raw

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._http_loop is not loop:
            self._http_loop = loop
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_CONNECTIONS))
        return self._http

    async def disconnect(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._http_loop is asyncio.get_running_loop():
            await http.close()
        await super().disconnect()


# -------------------------------------------------------------------------- node


@dataclass(frozen=True)
class Block:
    number: int
    timestamp: int  # unix seconds: what a contract sees as block.timestamp
    base_fee_per_gas: int


class Broadcast(enum.Enum):
    SENT = "sent"
    KNOWN = "known"  # the node already has these very bytes
    NONCE_USED = "nonce_used"  # some transaction with this nonce was mined: NOT "ours was"
    UNDERPRICED = "underpriced"  # fees below what the node takes (base fee, replacement)


class BroadcastRefused(ChainUnavailable):
    """The node refused the transaction for another reason; `reason` is its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the node refused the transaction: {reason}")
        self.reason = reason

    @property
    def insufficient_funds(self) -> bool:
        return INSUFFICIENT_FUNDS in self.reason


class BroadcastUncertain(ChainUnavailable):
    """No answer: the node may or may not have taken the transaction."""


class EvmNode:
    """One EVM JSON-RPC endpoint. Every method is one bounded request (or a few)."""

    def __init__(self, rpc_url: str, *, request_timeout_s: float) -> None:
        self._provider = _BoundedProvider(rpc_url, request_timeout_s)
        self.w3: AsyncWeb3[Any] = AsyncWeb3(self._provider)
        # Every call here passes hex addresses and no chainId: web3's ENS resolution and
        # its validation (an extra eth_chainId request per call and estimate) do nothing.
        self.w3.middleware_onion.remove("ens_name_to_address")
        self.w3.middleware_onion.remove("validation")

    @property
    def rpc_url(self) -> str:
        return str(self._provider.endpoint_uri)

    @property
    def request_timeout_s(self) -> float:
        return self._provider.timeout_s

    def observe(self, observer: RequestObserver | None) -> None:
        """Await `observer(method)` after every answered request (tests bend the chain
        between two reads with it)."""
        self._provider.observer = observer

    async def chain_id(self) -> int:
        with translated("read chain id"):
            return int(await self.w3.eth.chain_id)

    async def block(self, tag: int | str = "latest") -> Block:
        with translated("read block"):
            block = await self.w3.eth.get_block(cast(Any, tag))
        return Block(
            number=int(block["number"]),
            timestamp=int(block["timestamp"]),
            base_fee_per_gas=int(block.get("baseFeePerGas", 0) or 0),
        )

    async def chain_now_s(self) -> int:
        """Time as the token will judge validBefore when zpay issues one: the later of the
        wall clock and the latest block's timestamp (a chain whose clock runs ahead — or a
        test that warped anvil — must not get authorizations expired on arrival). For
        issuing and sending only; outcomes are judged by block timestamps alone."""
        return max(int(time.time()), (await self.block("latest")).timestamp)

    async def block_number(self) -> int:
        with translated("read block number"):
            return int(await self.w3.eth.block_number)

    async def fees(self, *, urgent: bool = False) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): twice the base fee absorbs six full
        blocks of base-fee growth before a transaction stops being includable."""
        base = (await self.block("latest")).base_fee_per_gas
        with translated("read priority fee"):
            priority = int(await self.w3.eth.max_priority_fee)
        if urgent:
            priority *= 2
        return 2 * base + priority, priority

    async def nonce(self, address: str, block: int | str) -> int:
        with translated("read account nonce"):
            return int(
                await self.w3.eth.get_transaction_count(cast(Any, address), cast(Any, block))
            )

    async def balance(self, address: str) -> int:
        with translated("read balance"):
            return int(await self.w3.eth.get_balance(cast(Any, address)))

    async def code(self, address: str) -> bytes:
        with translated("read code"):
            return bytes(await self.w3.eth.get_code(cast(Any, address)))

    async def call(
        self,
        to: str,
        data: bytes,
        block: int | str = "latest",
        *,
        sender: str | None = None,
        value: int = 0,
    ) -> bytes:
        params: dict[str, Any] = {"to": to, "data": to_hex(data)}
        if sender is not None:
            params["from"] = sender
        if value:
            params["value"] = value
        with translated("call"):
            return bytes(await self.w3.eth.call(cast(Any, params), cast(Any, block)))

    async def estimate_gas(
        self, *, sender: str | None, to: str | None, data: bytes, value: int = 0
    ) -> int:
        params: dict[str, Any] = {"data": to_hex(data)}
        if sender is not None:
            params["from"] = sender
        if to is not None:
            params["to"] = to
        if value:
            params["value"] = value
        with translated("estimate gas"):
            return int(await self.w3.eth.estimate_gas(cast(Any, params)))

    async def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        with translated("look up transaction"):
            try:
                return dict(await self.w3.eth.get_transaction(cast(Any, tx_hash)))
            except TransactionNotFound:
                return None

    async def tx_known(self, tx_hash: str) -> bool:
        """Whether the node has the transaction, pending or mined."""
        return await self.transaction(tx_hash) is not None

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        with translated("read receipt"):
            try:
                return dict(await self.w3.eth.get_transaction_receipt(cast(Any, tx_hash)))
            except TransactionNotFound:
                return None

    async def broadcast(self, raw: bytes) -> Broadcast:
        """Send raw signed bytes. Other refusals raise `BroadcastRefused`; no answer raises
        `BroadcastUncertain`."""
        try:
            await self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            message = rpc_message(exc).lower()
            if any(m in message for m in KNOWN_ERRORS):
                return Broadcast.KNOWN
            if any(m in message for m in NONCE_ERRORS):
                return Broadcast.NONCE_USED
            if any(m in message for m in UNDERPRICED_ERRORS):
                return Broadcast.UNDERPRICED
            raise BroadcastRefused(message) from exc
        except (TimeExhausted, TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BroadcastUncertain(str(_transport("broadcast", exc))) from None
        except Web3Exception as exc:
            raise BroadcastRefused(redact(str(exc))) from None
        return Broadcast.SENT

    async def raw_rpc(self, method: str, params: list[Any]) -> Any:
        with translated(method):
            response = await self.w3.provider.make_request(cast(Any, method), params)
        if "error" in response:
            raise ChainUnavailable(f"{method}: {redact(str(response['error']))}")
        return response.get("result")

    # ------------------------------------------------------------ EIP-3009 reads

    async def authorization_used(
        self, token: str, authorizer: str, nonce: bytes, block: int | str
    ) -> bool:
        data = evm_tx.encode_authorization_state(authorizer, nonce)
        return evm_tx.decode_bool(await self.call(token, data, block))

    async def authorization_log(
        self, token: str, authorizer: str, nonce: bytes, from_block: int, to_block: int
    ) -> tuple[str, int] | None:
        """(tx hash, block number) of the `AuthorizationUsed(authorizer, nonce)` event in
        [from_block, to_block], if any."""
        topics = [
            to_hex(evm_tx.TOPIC_AUTHORIZATION_USED),
            "0x" + "00" * 12 + authorizer[2:].lower(),
            to_hex(nonce),
        ]
        params = {"address": token, "topics": topics, "fromBlock": from_block, "toBlock": to_block}
        with translated("search AuthorizationUsed logs"):
            logs = await self.w3.eth.get_logs(cast(Any, params))
        for entry in logs:
            return to_hex(entry["transactionHash"]), int(entry["blockNumber"])
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._provider.disconnect()


class HeadWatch:
    """One poll of the node's head for every waiter of a process: a transfer's outcome
    can change only with a new block, so a wait re-reads its status once per block
    instead of once per poll interval each (32 waiters x 20 polls a second of several
    calls each is what a loaded anvil spent its time answering)."""

    def __init__(self, node: EvmNode, interval_s: float) -> None:
        self._node, self._interval_s = node, interval_s
        self._head: int | None = None
        self._generation = 0  # moves on each new head read (or a failed read)
        self._moved = asyncio.Event()
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def generation(self) -> int:
        """Take it BEFORE reading a status; `moved_since` it then waits for a newer head."""
        return self._generation

    async def moved_since(self, generation: int, timeout_s: float) -> None:
        """Until a head newer than the ones seen at `generation` is read (a failed read
        also wakes: the waiter's own call then meets the error), or `timeout_s`."""
        self._waiters += 1
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._watch())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    while self._generation == generation:
                        await self._moved.wait()
        finally:
            self._waiters -= 1

    async def close(self) -> None:
        """Stop watching (the node is going away); waiters time out as they would."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self) -> None:
        while self._waiters:
            head = await self._block_number_or_none()
            if head is None or self._head is None or head > self._head:
                self._head = head if head is not None else self._head
                self._generation += 1
                moved, self._moved = self._moved, asyncio.Event()
                moved.set()
            await asyncio.sleep(self._interval_s)

    async def _block_number_or_none(self) -> int | None:
        try:
            return await self._node.block_number()
        except ChainError:
            return None
