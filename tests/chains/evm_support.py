"""Shared by the EVM test modules: a REAL anvil process (from `npm install` at the repo
root) with an adapter on it, users, and signing as the user's wallet would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from zpay.chains import evm_tx
from zpay.chains.anvil import AnvilProcess
from zpay.chains.evm import EvmAdapter, EvmOptions
from zpay.chains.protocol import IssuedApproval, PreparedTransfer, TokenInfo
from zpay.chains.registry import NetworkSpec, get_network
from zpay.chains.relayer_journal import RelayerJournal

USDC = 10**6
TIMEOUT_S = 30.0


@dataclass
class Chain:
    anvil: AnvilProcess
    adapter: EvmAdapter
    relayer_secret: bytes
    w3: AsyncWeb3[Any]

    @property
    def usdc(self) -> TokenInfo:
        return self.adapter.token("USDC")

    async def rpc(self, method: str, *params: Any) -> Any:
        response = await self.w3.provider.make_request(cast(Any, method), list(params))
        assert "error" not in response, response
        return response.get("result")

    async def give_eth(self, address: str, wei: int = 10**18) -> None:
        await self.rpc("anvil_setBalance", address, hex(wei))

    async def usdc_of(self, address: str) -> int:
        return await self.adapter.balance(address, self.usdc)

    async def relayer_nonce_of(self, tx_hash: str) -> int:
        return int((await self.w3.eth.get_transaction(cast(Any, tx_hash)))["nonce"])

    async def eth_of(self, address: str) -> int:
        return int(await self.w3.eth.get_balance(cast(Any, address)))

    async def account_nonce(self, address: str, block: str = "latest") -> int:
        return int(await self.w3.eth.get_transaction_count(cast(Any, address), cast(Any, block)))

    async def broadcast(self, raw: bytes, tx_hash: str) -> int:
        """Send a raw tx outside the adapter; the receipt's status."""
        await self.w3.eth.send_raw_transaction(raw)
        receipt = await self.w3.eth.wait_for_transaction_receipt(cast(Any, tx_hash))
        return int(receipt["status"])

    async def relayer_tx_behind_the_adapters_back(self, to: str, data: bytes, gas: int) -> int:
        raw, tx_hash = evm_tx.sign_relayer_transaction(
            self.relayer_secret,
            chain_id=31337,
            nonce=await self.account_nonce(self.adapter.relayer_address, "pending"),
            to=to,
            data=data,
            gas=gas,
            max_fee_per_gas=10**10,
            max_priority_fee_per_gas=10**9,
        )
        return await self.broadcast(raw, tx_hash)

    async def relayer_txs(self, from_block: int) -> list[dict[str, Any]]:
        """Every transaction the relayer got mined after `from_block`, with its receipt's
        status (the chain as the referee)."""
        head = int(await self.w3.eth.block_number)
        found = []
        for number in range(from_block + 1, head + 1):
            block = await self.w3.eth.get_block(number, full_transactions=True)
            for tx in block["transactions"]:
                tx = cast(Any, tx)
                if evm_tx.same_address(str(tx["from"]), self.adapter.relayer_address):
                    receipt = await self.w3.eth.get_transaction_receipt(tx["hash"])
                    found.append(
                        {
                            "nonce": int(tx["nonce"]),
                            "input": bytes(tx["input"]),
                            "status": int(receipt["status"]),
                        }
                    )
        return found

    async def open_adapter(
        self, *, journal: RelayerJournal | None = None, options: EvmOptions | None = None
    ) -> EvmAdapter:
        """Another "process" on the same chain with the same relayer key."""
        return await EvmAdapter.local(
            evm_local(), self.anvil.rpc_url, self.relayer_secret, journal=journal, options=options
        )


def evm_local() -> NetworkSpec:
    return get_network("evm-local", environ={})


def fast_options(**changes: Any) -> EvmOptions:
    base: dict[str, Any] = {
        "confirm_timeout_s": TIMEOUT_S,
        "request_timeout_s": TIMEOUT_S,
        "poll_interval_s": 0.05,
        "heal_interval_s": 0.5,
        "stuck_after_s": 5.0,
        "expiry_margin_s": 2,
    }
    return EvmOptions(**{**base, **changes})


@contextlib.asynccontextmanager
async def local_chain(
    options: EvmOptions | None = None,
    *,
    anvil_args: Sequence[str] = (),
    journal: RelayerJournal | None = None,
) -> AsyncIterator[Chain]:
    """A fresh anvil + adapter, for tests that bend the chain (time, mining, mempool).
    `anvil_args=("--block-time", "1")`: blocks on a clock, like a real network."""
    anvil = AnvilProcess(chain_id=31337, extra_args=tuple(anvil_args))
    await anvil.start_async()
    relayer_secret = evm_tx.new_private_key()
    try:
        adapter = await EvmAdapter.local(
            evm_local(), anvil.rpc_url, relayer_secret, options=options, journal=journal
        )
    except BaseException:
        await anvil.stop_async()
        raise
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.rpc_url))
    try:
        yield Chain(anvil, adapter, relayer_secret, w3)
    finally:
        await adapter.close()
        await w3.provider.disconnect()
        await anvil.stop_async()


@dataclass
class User:
    secret: bytes
    address: str


async def funded_user(chain: Chain, usdc: int = 1_000 * USDC) -> User:
    secret = evm_tx.new_private_key()
    user = User(secret, evm_tx.address_of(secret))
    await chain.adapter.faucet(user.address, chain.usdc, usdc)
    return user


def sign_typed(user: User, issued: IssuedApproval) -> dict[str, Any]:
    typed = issued.public["typed_data"]
    signature = Account.sign_typed_data(user.secret, full_message=typed).signature
    return {"signature": "0x" + bytes(signature).hex(), "typed_data": typed}


def sign_unsigned(secret: bytes, issued: IssuedApproval, **changes: Any) -> dict[str, Any]:
    tx = evm_tx.UnsignedTransaction.from_json(issued.public["unsigned_transaction"])
    signable = dict(tx.as_signable(), **changes)
    raw = Account.sign_transaction(signable, secret).raw_transaction
    return {"signed_transaction": "0x" + bytes(raw).hex()}


async def pay(
    adapter: EvmAdapter,
    secret: bytes,
    source: str,
    destination: str,
    token: TokenInfo,
    amount: int,
    seed: str,
) -> PreparedTransfer:
    return await adapter.prepare_transfer(
        secret=secret,
        source=source,
        destination=destination,
        token=token,
        amount_base_units=amount,
        reference_seed=seed,
    )


def mine_after(
    chain: Chain, methods: Sequence[str] | None = None, times: int | None = None
) -> Callable[[str], Awaitable[None]]:
    """An adapter-node observer that mines a block (`evm_mine`) right after the adapter's
    request of one of `methods` (any request if None), at most `times` times: the chain
    moves on BETWEEN two reads of one status query."""
    left = [times]

    async def observer(method: str) -> None:
        if methods is not None and method not in methods:
            return
        if left[0] is not None:
            if left[0] <= 0:
                return
            left[0] -= 1
        await chain.rpc("evm_mine")

    return observer
