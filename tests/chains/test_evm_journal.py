"""The relayer journal: one relayer key shared by several processes (API replicas,
workers), on both databases, with anvil mining on a block time as the referee.

"Processes" are EvmAdapter instances with their own node connection and their own
`Database` engine (so their own connections and, on SQLite, their own in-process write
lock): all they share is the relayer key, the chain and the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.chains.evm_support import (
    TIMEOUT_S,
    USDC,
    Chain,
    fast_options,
    local_chain,
    mine_after,
    pay,
)
from zpay.chains import evm_refs, evm_tx
from zpay.chains.evm import EvmAdapter
from zpay.chains.protocol import ChainUnavailable, PreparedTransfer, TransferState
from zpay.chains.relayer_journal import InMemoryRelayerJournal, OutstandingTx, RelayerJournal
from zpay.store.database import Database
from zpay.store.relayer_journal import DbRelayerJournal

BLOCK_TIME = ("--block-time", "1")


def carried_nonce(calldata: bytes) -> bytes:
    """The EIP-3009 nonce a transferWithAuthorization call carries."""
    assert calldata[:4] == evm_tx.SELECTOR_TRANSFER_WITH_AUTHORIZATION
    return calldata[4 + 5 * 32 : 4 + 6 * 32]


def tx(nonce: int, authorization: str | None = None) -> OutstandingTx:
    return OutstandingTx(
        nonce=nonce,
        tx_hash=f"0x{nonce:064x}",
        raw=bytes([2, nonce % 256]),
        max_fee_per_gas=2**200 + nonce,
        max_priority_fee_per_gas=nonce,
        authorization=authorization,
        sent_at=datetime.now(UTC),
    )


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[tuple[Database, Database]]:
    first, second = Database(database_url, pool_size=5), Database(database_url, pool_size=5)
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


# ------------------------------------------------------------------- the journal


async def check_journal_semantics(journal: RelayerJournal) -> None:
    async with journal.slot("evm-test", "0xAbC") as slot:
        assert slot.next_nonce is None and slot.outstanding() == []
        await slot.record(tx(5, "a"))
        await slot.record(tx(6))
        await slot.record(tx(7, "a"))
        assert slot.next_nonce == 8
    # Committed; the address is case-insensitive; reads need no lock.
    assert [t.nonce for t in await journal.outstanding("evm-test", "0xabc")] == [5, 6, 7]
    assert [t.nonce for t in await journal.outstanding("evm-test", "0xABC", authorization="a")] == [
        5,
        7,
    ]
    assert await journal.outstanding("other-chain", "0xabc") == []
    with pytest.raises(RuntimeError):
        async with journal.slot("evm-test", "0xabc") as slot:
            await slot.record(tx(9, "b"))
            raise RuntimeError("crash before the commit")
    async with journal.slot("evm-test", "0xabc") as slot:
        assert slot.next_nonce == 8 and slot.for_authorization("b") == []
        replacement = tx(6, "a")
        await slot.record(replacement)  # a replacement takes its predecessor's place
        await slot.settle_below(6)
        assert [t.nonce for t in slot.for_authorization("a")] == [6, 7]
    stored = await journal.outstanding("evm-test", "0xabc")
    assert stored[0] == replacement and stored[0].max_fee_per_gas == 2**200 + 6
    assert [t.nonce for t in stored] == [6, 7]


async def test_in_memory_journal_semantics() -> None:
    await check_journal_semantics(InMemoryRelayerJournal())


async def test_database_journal_semantics(databases: tuple[Database, Database]) -> None:
    await check_journal_semantics(DbRelayerJournal(databases[0]))


async def test_database_journal_slots_exclude_each_other_across_processes(
    databases: tuple[Database, Database],
) -> None:
    """40 allocations from two processes, each yielding to the others between reading the
    next nonce and recording it: without the deployment-wide lock they would collide."""
    journals = [DbRelayerJournal(db) for db in databases]

    async def allocate(journal: DbRelayerJournal) -> int:
        async with journal.slot("evm-test", "0xrelayer") as slot:
            nonce = slot.next_nonce or 0
            for _ in range(3):
                await asyncio.sleep(0)
            await slot.record(tx(nonce))
            return nonce

    nonces = await asyncio.gather(*(allocate(journals[i % 2]) for i in range(40)))
    assert sorted(nonces) == list(range(40))


# ------------------------------------------------------------ relaying through it


async def submitted_once(
    chain: Chain, adapters: list[EvmAdapter], prepared: PreparedTransfer, start: int
) -> None:
    """Three concurrent submits of one transfer (spread over `adapters`) → exactly one
    relayer transaction, confirmed."""
    await asyncio.gather(*(adapters[i % len(adapters)].submit_transfer(prepared) for i in range(3)))
    status = await adapters[0].wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
    assert status.state is TransferState.CONFIRMED, status
    mined = await chain.relayer_txs(start)
    assert [t["status"] for t in mined] == [1], mined
    relayer = chain.adapter.relayer_address
    assert await chain.account_nonce(relayer, "pending") == await chain.account_nonce(relayer)


@pytest.mark.parametrize("anvil_args", [(), BLOCK_TIME], ids=["automine", "block-time"])
async def test_three_concurrent_submits_send_one_relayer_tx(anvil_args: tuple[str, ...]) -> None:
    async with local_chain(fast_options(), anvil_args=anvil_args) as chain:
        session = chain.adapter.generate_wallet()
        await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
        prepared = await pay(
            chain.adapter,
            session.secret,
            session.address,
            chain.adapter.generate_wallet().address,
            chain.usdc,
            2 * USDC,
            "pay_thrice",
        )
        start = int(await chain.w3.eth.block_number)
        await submitted_once(chain, [chain.adapter], prepared, start)
        assert await chain.usdc_of(session.address) == 8 * USDC


async def test_two_processes_share_one_relayer_key_through_the_database(
    databases: tuple[Database, Database],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with local_chain(fast_options(), anvil_args=BLOCK_TIME) as chain:
        processes = [
            await chain.open_adapter(journal=DbRelayerJournal(db), options=fast_options())
            for db in databases
        ]
        try:
            sessions = [chain.adapter.generate_wallet() for _ in range(4)]
            for session in sessions:
                await chain.adapter.faucet(session.address, chain.usdc, 1_000 * USDC)
            merchant = chain.adapter.generate_wallet().address
            start = int(await chain.w3.eth.block_number)
            caplog.set_level(logging.WARNING, logger="zpay.chains.evm_relayer")

            async def payment(i: int) -> tuple[PreparedTransfer, object]:
                process, session = processes[i % 2], sessions[i % 4]
                prepared = await pay(
                    process,
                    session.secret,
                    session.address,
                    merchant,
                    chain.usdc,
                    USDC + i,
                    f"pay_two_processes_{i}",
                )
                await process.submit_transfer(prepared)
                return prepared, await process.wait_for_transfer(
                    prepared.reference, timeout_s=TIMEOUT_S
                )

            done = await asyncio.gather(*(payment(i) for i in range(100)))
            assert all(s.state is TransferState.CONFIRMED for _, s in done), done  # type: ignore[attr-defined]
            mined = await chain.relayer_txs(start)
            # Exactly one relayer transaction per authorization, all succeeded, no gaps.
            assert len(mined) == 100 and all(t["status"] == 1 for t in mined)
            carried = {carried_nonce(t["input"]) for t in mined}
            assert carried == {evm_tx.payment_nonce(f"pay_two_processes_{i}") for i in range(100)}
            nonces = sorted(t["nonce"] for t in mined)
            assert nonces == list(range(nonces[0], nonces[0] + 100))
            assert not [r for r in caplog.records if "taken" in r.getMessage()], caplog.text
            assert await chain.usdc_of(merchant) == sum(USDC + i for i in range(100))
            # And one transfer submitted by both processes at once: still one relayer tx.
            prepared = await pay(
                processes[0],
                sessions[0].secret,
                sessions[0].address,
                merchant,
                chain.usdc,
                USDC,
                "pay_both_processes",
            )
            await submitted_once(chain, processes, prepared, int(await chain.w3.eth.block_number))
            # Whatever was journaled got settled by the heals of the waits (or will be).
            for process in processes:
                await process.resync_relayer()
            assert await processes[0].relayer_journal() == []
            assert await processes[1].relayer_journal() == []
        finally:
            for process in processes:
                await process.close()


async def test_any_process_heals_what_another_one_sent(
    databases: tuple[Database, Database],
) -> None:
    async with local_chain(fast_options()) as chain:
        sender, healer = [
            await chain.open_adapter(journal=DbRelayerJournal(db), options=fast_options())
            for db in databases
        ]
        try:
            session = chain.adapter.generate_wallet()
            await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
            prepared = await pay(
                sender,
                session.secret,
                session.address,
                chain.adapter.generate_wallet().address,
                chain.usdc,
                4 * USDC,
                "pay_healed_elsewhere",
            )
            await chain.rpc("evm_setAutomine", False)
            await sender.submit_transfer(prepared)
            pending = await healer.transfer_status(prepared.reference)
            assert pending.state is TransferState.PENDING and pending.tx_id
            await chain.rpc("anvil_dropTransaction", pending.tx_id)
            await sender.close()  # the sending process is gone
            await healer.resync_relayer()  # another one puts its transaction back
            assert await chain.w3.eth.get_transaction(pending.tx_id)  # type: ignore[arg-type]
            await chain.rpc("evm_mine")
            done = await healer.transfer_status(prepared.reference)
            assert done.state is TransferState.CONFIRMED and done.tx_id == pending.tx_id
            assert await chain.usdc_of(session.address) == 6 * USDC
        finally:
            await healer.close()


async def test_nonce_too_low_is_never_read_as_mined() -> None:
    """A dropped relayer tx whose nonce someone else uses meanwhile: putting it back gets
    "nonce too low". That is not taken for "it was mined" (nor is another tx sent in the
    same breath): the chain says the payment did not land, so it is UNKNOWN, and sending
    it again settles it, once."""
    async with local_chain(fast_options()) as chain:
        session = chain.adapter.generate_wallet()
        await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
        merchant = chain.adapter.generate_wallet().address
        prepared = await pay(
            chain.adapter,
            session.secret,
            session.address,
            merchant,
            chain.usdc,
            4 * USDC,
            "pay_nonce_taken",
        )
        relayer = chain.adapter.relayer_address
        await chain.rpc("evm_setAutomine", False)
        await chain.adapter.submit_transfer(prepared)
        pending = await chain.adapter.transfer_status(prepared.reference)
        assert pending.state is TransferState.PENDING and pending.tx_id
        await chain.rpc("anvil_dropTransaction", pending.tx_id)
        # Someone else signs with the relayer key and takes that nonce (not mined yet).
        raw, _ = evm_tx.sign_relayer_transaction(
            chain.relayer_secret,
            chain_id=31337,
            nonce=await chain.account_nonce(relayer),
            to=relayer,
            data=b"",
            gas=21_000,
            max_fee_per_gas=10**10,
            max_priority_fee_per_gas=10**9,
        )
        await chain.w3.eth.send_raw_transaction(raw)
        # It gets mined right after the adapter found its own tx gone, before it puts
        # that tx back: the node answers "nonce too low".
        chain.adapter.node.observe(mine_after(chain, ["eth_getTransactionByHash"], times=1))
        try:
            await chain.adapter.submit_transfer(prepared)
        finally:
            chain.adapter.node.observe(None)
        assert await chain.account_nonce(relayer, "pending") == await chain.account_nonce(relayer)
        status = await chain.adapter.transfer_status(prepared.reference)
        assert status.state is TransferState.UNKNOWN, status
        assert await chain.usdc_of(merchant) == 0
        await chain.rpc("evm_setAutomine", True)
        await chain.adapter.submit_transfer(prepared)
        done = await chain.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
        assert done.state is TransferState.CONFIRMED and done.tx_id != pending.tx_id
        assert await chain.usdc_of(merchant) == 4 * USDC


async def test_a_dropped_relayer_tx_is_unknown_and_resending_revives_it() -> None:
    async with local_chain(fast_options()) as chain:
        session = chain.adapter.generate_wallet()
        await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
        prepared = await pay(
            chain.adapter,
            session.secret,
            session.address,
            chain.adapter.generate_wallet().address,
            chain.usdc,
            2 * USDC,
            "pay_dropped_then_resent",
        )
        relayer = chain.adapter.relayer_address
        await chain.rpc("evm_setAutomine", False)
        await chain.adapter.submit_transfer(prepared)
        pending = await chain.adapter.transfer_status(prepared.reference)
        assert pending.state is TransferState.PENDING and pending.tx_id
        await chain.rpc("anvil_dropTransaction", pending.tx_id)
        # The node lost it: nothing on chain says it will land, re-sending is safe ...
        assert (await chain.adapter.transfer_status(prepared.reference)).state is (
            TransferState.UNKNOWN
        )
        # ... and puts that very transaction back rather than paying for another.
        await chain.adapter.submit_transfer(prepared)
        again = await chain.adapter.transfer_status(prepared.reference)
        assert again.state is TransferState.PENDING and again.tx_id == pending.tx_id
        await chain.rpc("evm_mine")
        done = await chain.adapter.transfer_status(prepared.reference)
        assert done.state is TransferState.CONFIRMED and done.tx_id == pending.tx_id
        assert await chain.account_nonce(relayer, "pending") == await chain.account_nonce(relayer)


class CountingJournal(InMemoryRelayerJournal):
    """Counts the slots opened: the deployment-wide lock taken."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = 0

    def slot(self, chain: str, relayer_address: str):  # type: ignore[no-untyped-def]
        self.slots += 1
        return super().slot(chain, relayer_address)


async def test_concurrent_relays_share_slots_and_a_refused_one_costs_the_others_nothing() -> None:
    """21 relays at once: they go out in a slot or two, not one slot each. The 11th is
    refused by the node (gas over the block limit): the others are sent, journaled and mined, on
    consecutive nonces (the refused one's nonce goes to the next)."""
    journal = CountingJournal()
    async with local_chain(fast_options(), anvil_args=BLOCK_TIME, journal=journal) as chain:
        session = chain.adapter.generate_wallet()
        await chain.adapter.faucet(session.address, chain.usdc, 100 * USDC)
        merchant = chain.adapter.generate_wallet().address
        prepared = [
            await pay(chain.adapter, session.secret, session.address, merchant, chain.usdc,
                      USDC + i, f"pay_shared_slot_{i}")
            for i in range(21)
        ]
        signed = [evm_refs.decode_payload(p.payload, chain.adapter.chain_id) for p in prepared]
        start = int(await chain.w3.eth.block_number)
        slots_before = journal.slots
        relayer = chain.adapter._relayer
        answers = await asyncio.gather(
            *(
                relayer.relay(token=token, signed=auth, gas=10**9 if i == 10 else 200_000)
                for i, (token, auth) in enumerate(signed)  # type: ignore[misc]
            ),
            return_exceptions=True,
        )
        assert isinstance(answers[10], ChainUnavailable), answers[10]
        sent = [a for i, a in enumerate(answers) if i != 10]
        assert all(isinstance(a, str) for a in sent), sent
        assert journal.slots - slots_before <= 3, journal.slots - slots_before
        statuses = await asyncio.gather(
            *(
                chain.adapter.wait_for_transfer(p.reference, timeout_s=TIMEOUT_S)
                for i, p in enumerate(prepared)
                if i != 10
            )
        )
        assert [s.state for s in statuses] == [TransferState.CONFIRMED] * 20, statuses
        refused = await chain.adapter.transfer_status(prepared[10].reference)
        assert refused.state is TransferState.UNKNOWN  # never sent: safe to send again
        mined = await chain.relayer_txs(start)
        assert len(mined) == 20 and all(t["status"] == 1 for t in mined)
        nonces = sorted(t["nonce"] for t in mined)
        assert nonces == list(range(nonces[0], nonces[0] + 20))
        assert await chain.usdc_of(merchant) == sum(USDC + i for i in range(21) if i != 10)
