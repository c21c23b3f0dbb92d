"""The embedded solana-local network: persistence across restarts, one chain shared by
every process on its state directory, local-only flows."""

from __future__ import annotations

import json
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from tests.chains.solana_support import open_env, wallet_sign
from zpay.chains import solana_local
from zpay.chains.protocol import (
    ChainUnavailable,
    FlowNotSupported,
    TransferFailed,
    TransferState,
)
from zpay.chains.registry import get_network
from zpay.chains.solana import SolanaAdapter, TxRejected
from zpay.chains.solana_local import LEDGER_FILE, STATE_FILE, LocalChain
from zpay.chains.solana_tx import associated_token_address, build_transfer

USDC = 10**6


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    user, merchant = Keypair(), str(Keypair().pubkey())
    async with open_env("local", tmp_path) as env:
        instance_id, mint = env.adapter.instance_id, env.usdc.address
        fee_payer = env.adapter.fee_payer_address
        await env.fund(str(user.pubkey()), 100 * USDC)
        session = env.adapter.generate_wallet()
        await env.approve(user, session.address, 60 * USDC)
        paid = await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=merchant,
            token=env.usdc,
            amount_base_units=15 * USDC,
            reference_seed="pay_1",
        )
        await env.adapter.submit_transfer(paid)
        env.advance_blockhash()
        # issued and prepared before the restart, used after it
        later_user = Keypair()
        await env.fund(str(later_user.pubkey()), 9 * USDC)
        later_session = env.adapter.generate_wallet()
        pending_approval = await env.adapter.build_approval(
            approval_id="ap_later",
            user_wallet=str(later_user.pubkey()),
            session_wallet=later_session.address,
            token=env.usdc,
            amount_base_units=9 * USDC,
        )
        unsent = await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=merchant,
            token=env.usdc,
            amount_base_units=5 * USDC,
            reference_seed="pay_2",
        )
        balances = await env.balances(str(user.pubkey()), session.address, merchant)
        lamports = await env.adapter.fee_payer_lamports()
    assert balances == [40 * USDC, 45 * USDC, 15 * USDC]

    async with open_env("local", tmp_path) as env:
        assert env.adapter.instance_id == instance_id
        assert await env.adapter.chain_instance_id() == instance_id
        assert env.usdc.address == mint
        assert env.adapter.fee_payer_address == fee_payer
        assert await env.balances(str(user.pubkey()), session.address, merchant) == balances
        assert await env.adapter.fee_payer_lamports() == lamports
        # history survived: the landed transfer is confirmed and is never replayed
        assert (await env.adapter.transfer_status(paid.reference)).state is TransferState.CONFIRMED
        await env.adapter.submit_transfer(paid)
        assert await env.balances(merchant) == [15 * USDC]
        # the blockhash survived too: what was issued or prepared before still works
        await env.adapter.submit_transfer(unsent)
        await env.adapter.submit_approval(
            issued=pending_approval,
            user_wallet=str(later_user.pubkey()),
            session_wallet=later_session.address,
            token=env.usdc,
            amount_base_units=9 * USDC,
            signed=wallet_sign(pending_approval, later_user),
        )
        assert await env.balances(merchant, later_session.address) == [20 * USDC, 9 * USDC]
        # and it keeps persisting after a restart; a transfer prepared against a blockhash
        # that lapsed before the restart stays dead after it
        stale = await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=merchant,
            token=env.usdc,
            amount_base_units=USDC,
            reference_seed="stale",
        )
        env.advance_blockhash()
        blockhash = env.chain.latest_blockhash().blockhash
        after = await env.balances(session.address, merchant, later_session.address)

    async with open_env("local", tmp_path) as env:
        assert env.adapter.instance_id == instance_id
        assert env.chain.latest_blockhash().blockhash == blockhash
        assert await env.balances(session.address, merchant, later_session.address) == after
        with pytest.raises(TransferFailed, match="lapsed"):
            await env.adapter.submit_transfer(stale)
        assert await env.balances(merchant) == [after[1]]


async def test_a_fresh_state_dir_is_a_new_instance(tmp_path: Path) -> None:
    async with open_env("local", tmp_path / "a") as a, open_env("local", tmp_path / "b") as b:
        assert a.adapter.instance_id != b.adapter.instance_id
        assert a.usdc.address != b.usdc.address


async def test_two_owners_of_one_state_dir_share_one_chain(tmp_path: Path) -> None:
    """Two adapters on one state directory (as two processes: each its own flock
    descriptor) see one chain: what one writes the other reads, a blockhash lapsed by one
    is lapsed for the other, a transaction one processed the other refuses to run again."""
    user, merchant = Keypair(), str(Keypair().pubkey())
    async with open_env("local", tmp_path) as a, open_env("local", tmp_path) as b:
        assert (a.adapter.instance_id, a.usdc.address) == (b.adapter.instance_id,
                                                           b.usdc.address)
        await a.fund(str(user.pubkey()), 50 * USDC)
        session = b.adapter.generate_wallet()
        await b.approve(user, session.address, 30 * USDC)
        assert await a.balances(str(user.pubkey()), session.address) == [20 * USDC, 30 * USDC]
        paid = await a.adapter.prepare_transfer(
            secret=session.secret, source=session.address, destination=merchant,
            token=a.usdc, amount_base_units=12 * USDC, reference_seed="pay_1")
        await a.adapter.submit_transfer(paid)
        with pytest.raises(TxRejected):  # the same signed transaction, through the other
            b.chain.process(Transaction.from_bytes(paid.payload))
        assert await b.balances(merchant, session.address) == [12 * USDC, 18 * USDC]

        stale = await b.adapter.prepare_transfer(
            secret=session.secret, source=session.address, destination=merchant,
            token=b.usdc, amount_base_units=1 * USDC, reference_seed="pay_2")
        a.advance_blockhash()
        assert b.chain.latest_blockhash() == a.chain.latest_blockhash()
        with pytest.raises(TransferFailed, match="lapsed"):
            await b.adapter.submit_transfer(stale)
    async with open_env("local", tmp_path) as env:  # and the ledger holds it all
        assert await env.balances(merchant, session.address) == [12 * USDC, 18 * USDC]


async def test_a_replica_follows_a_compaction_and_skips_a_torn_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = str(Keypair().pubkey())
    async with open_env("local", tmp_path) as a, open_env("local", tmp_path) as b:
        monkeypatch.setattr(solana_local, "_COMPACT_MIN_BYTES", 0)
        monkeypatch.setattr(solana_local, "_COMPACT_RATIO", 1)
        before = (tmp_path / LEDGER_FILE).stat().st_ino
        await a.fund(owner, 3 * USDC)  # outgrows the snapshot: a new file replaces it
        assert (tmp_path / LEDGER_FILE).stat().st_ino != before
        assert await b.balances(owner) == [3 * USDC]
        monkeypatch.setattr(solana_local, "_COMPACT_MIN_BYTES", 2**40)
        with open(tmp_path / LEDGER_FILE, "ab") as ledger:  # a writer died mid-frame
            ledger.write(b"\x40\x00\x00\x00\xde\xad")
        assert await b.balances(owner) == [3 * USDC]  # a reader stops before it
        await b.fund(owner, 1 * USDC)  # a writer cuts it off first
        assert await a.balances(owner) == [4 * USDC]
        await a.fund(owner, 1 * USDC)
        assert await b.balances(owner) == [5 * USDC]


_MINTER = """
import sys
from pathlib import Path
from solders.pubkey import Pubkey
from zpay.chains.solana_local import LocalChain
chain = LocalChain(Path(sys.argv[1]), tokens={"USDC": 6}, fsync=False)
owner, mint = Pubkey.from_string(sys.argv[2]), Pubkey.from_string(chain.mint_address("USDC"))
for _ in range(int(sys.argv[3])):
    chain.faucet_mint(owner, mint, 1)
chain.close()
"""


def test_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    """Three processes mint on one chain at once, 60 times each: every process's view, and
    the ledger read afresh, hold all 180."""
    import subprocess
    import sys

    chain = LocalChain(tmp_path, tokens={"USDC": 6}, fsync=False)
    owner = Keypair().pubkey()
    mint = Pubkey.from_string(chain.mint_address("USDC"))
    account = associated_token_address(owner, mint)
    try:
        workers = [subprocess.Popen([sys.executable, "-c", _MINTER, str(tmp_path), str(owner),
                                     "60"]) for _ in range(3)]
        assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
        seen = chain.get_account(account)
    finally:
        chain.close()
    fresh = LocalChain(tmp_path, tokens={"USDC": 6}, fsync=False)
    try:
        reloaded = fresh.get_account(account)
    finally:
        fresh.close()
    for view in (seen, reloaded):
        assert view is not None
        assert int.from_bytes(view.data[64:72], "little") == 180


async def test_torn_ledger_tail_is_dropped(tmp_path: Path) -> None:
    owner = str(Keypair().pubkey())
    async with open_env("local", tmp_path) as env:
        await env.fund(owner, 3 * USDC)
    with open(tmp_path / LEDGER_FILE, "ab") as ledger:
        ledger.write(b"\x40\x00\x00\x00\xde\xad")  # a frame header and half a payload
    async with open_env("local", tmp_path) as env:
        assert await env.balances(owner) == [3 * USDC]
        await env.fund(owner, 1 * USDC)
    async with open_env("local", tmp_path) as env:
        assert await env.balances(owner) == [4 * USDC]


async def test_state_file_is_private_and_errors_do_not_echo_it(tmp_path: Path) -> None:
    async with open_env("local", tmp_path):
        pass
    state_file = tmp_path / STATE_FILE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    document = json.loads(state_file.read_text())
    secret = document["fee_payer_secret"]
    document["faucet_secret"] = "zz" + secret  # not hex
    state_file.write_text(json.dumps(document))
    with pytest.raises(ChainUnavailable) as err:
        SolanaAdapter.local(get_network("solana-local"), tmp_path)
    assert err.value.code == "chain_state_corrupt"
    assert secret not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


async def test_faucet_refused_on_a_network_that_is_not_local() -> None:
    spec = get_network("solana-local")
    not_local = type(spec)(
        info=type(spec.info)(**{**spec.info.__dict__, "local": False}),
        rpc_url=spec.rpc_url,
        tokens=spec.tokens,
        raw=spec.raw,
    )
    adapter = SolanaAdapter.local(not_local, None)
    try:
        with pytest.raises(FlowNotSupported):
            await adapter.faucet(str(Keypair().pubkey()), adapter.token("USDC"), 1)
    finally:
        await adapter.close()
    devnet = SolanaAdapter.rpc(get_network("solana-devnet"), bytes(Keypair()))
    try:
        with pytest.raises(FlowNotSupported):
            await devnet.faucet(str(Keypair().pubkey()), devnet.token("USDC"), 1)
        assert devnet.token("USDC").address == "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU"
    finally:
        await devnet.close()


async def test_closed_chain_is_unavailable() -> None:
    adapter = SolanaAdapter.local(get_network("solana-local"), None)
    await adapter.close()
    with pytest.raises(ChainUnavailable):
        await adapter.balance(str(Keypair().pubkey()), adapter.token("USDC"))


async def test_ledger_is_compacted_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(solana_local, "_COMPACT_MIN_BYTES", 0)
    monkeypatch.setattr(solana_local, "_COMPACT_RATIO", 1)
    owners = [str(Keypair().pubkey()) for _ in range(5)]
    async with open_env("local", tmp_path) as env:
        for i, owner in enumerate(owners):
            await env.fund(owner, (i + 1) * USDC)
        # every append outgrew the snapshot, so the file is always one fresh snapshot
        ledger = (tmp_path / LEDGER_FILE).read_bytes()
        assert struct.unpack_from("<I", ledger)[0] == len(ledger) - 8
    async with open_env("local", tmp_path) as env:
        assert await env.balances(*owners) == [(i + 1) * USDC for i in range(5)]


def test_local_chain_is_safe_to_share_between_threads() -> None:
    chain = LocalChain(None, tokens={"USDC": 6})
    mint = Pubkey.from_string(chain.mint_address("USDC"))
    owner = Keypair().pubkey()

    def mint_some(_: int) -> str:
        return chain.faucet_mint(owner, mint, 1)

    with ThreadPoolExecutor(max_workers=8) as pool:
        tx_ids = list(pool.map(mint_some, range(200)))
    assert len(set(tx_ids)) == 200
    account = chain.get_account(associated_token_address(owner, mint))
    assert account is not None
    assert int.from_bytes(account.data[64:72], "little") == 200
    chain.close()


def test_a_transaction_with_a_bad_or_missing_signature_is_refused_and_not_recorded() -> None:
    """The chain verifies signatures once itself (LiteSVM's own check is off): a forged
    signature, or one signer's missing, is refused before anything runs, and the genuine
    transaction still lands afterwards."""
    chain = LocalChain(None, tokens={"USDC": 6})
    mint = Pubkey.from_string(chain.mint_address("USDC"))
    owner, to = Keypair(), Keypair().pubkey()
    chain.faucet_mint(owner.pubkey(), mint, 10)
    genuine = build_transfer(
        fee_payer=chain.fee_payer, owner=owner, destination_owner=to, mint=mint, decimals=6,
        amount_base_units=4, recent_blockhash=chain.latest_blockhash().blockhash,
        reference_seed="k:pay_1")
    forged = Transaction.populate(genuine.message, [
        genuine.signatures[0], Keypair().sign_message(bytes(genuine.message))])
    unsigned = Transaction.populate(genuine.message, [genuine.signatures[0], Signature.default()])
    for bad in (forged, unsigned):
        with pytest.raises(TxRejected) as refused:
            chain.process(bad)
        assert "SignatureFailure" in str(refused.value)
        assert chain.signature_status(bad.signatures[0]).state is TransferState.UNKNOWN
    chain.process(genuine)
    assert chain.signature_status(genuine.signatures[0]).state is TransferState.CONFIRMED
    account = chain.get_account(associated_token_address(owner.pubkey(), mint))
    assert account is not None and int.from_bytes(account.data[64:72], "little") == 6
    chain.close()
