"""`solana-local` reached over JSON-RPC (a test validator, here the fake node over LiteSVM):
it sets itself up like the embedded network — fee payer, faucet, mint — and keeps them."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from solders.account import Account
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from tests.chains.fake_solana_rpc import FakeSolanaRpc
from tests.chains.solana_support import rpc_spec, wallet_sign
from zpay.chains.factory import build_adapter
from zpay.chains.protocol import (
    ChainError,
    ChainUnavailable,
    FlowNotSupported,
    TokenInfo,
    TransferState,
)
from zpay.chains.registry import NetworkSpec, get_network
from zpay.chains.solana import SolanaAdapter
from zpay.chains.solana_bootstrap import (
    FEE_PAYER_AIRDROP_LAMPORTS,
    FEE_PAYER_LOW_LAMPORTS,
    STATE_FILE,
    check_mint,
)
from zpay.chains.solana_local import LocalChain
from zpay.settings import Settings

USDC = 10**6


@contextmanager
def validator() -> Iterator[FakeSolanaRpc]:
    """A fresh test validator: no mints; its own faucet pays the airdrops."""
    chain = LocalChain(None, tokens={})
    try:
        with FakeSolanaRpc(chain).running() as rpc:
            yield rpc
    finally:
        chain.close()


def local_spec(rpc: FakeSolanaRpc) -> NetworkSpec:
    """The registry's solana-local, pointed at `rpc` the way an operator does it."""
    spec = get_network("solana-local", environ={"ZPAY_RPC_URL_SOLANA_LOCAL": rpc.url})
    assert spec.info.local and spec.rpc_url == rpc.url
    return spec


async def open_adapter(rpc: FakeSolanaRpc, state_dir: Path) -> SolanaAdapter:
    return await SolanaAdapter.local_rpc(
        local_spec(rpc), state_dir, confirm_timeout_s=5.0, poll_interval_s=0.01
    )


@asynccontextmanager
async def adapter_on(rpc: FakeSolanaRpc, state_dir: Path) -> AsyncIterator[SolanaAdapter]:
    adapter = await open_adapter(rpc, state_dir)
    try:
        yield adapter
    finally:
        await adapter.close()


def is_zpay_mint(rpc: FakeSolanaRpc, token: TokenInfo, faucet: Pubkey) -> bool:
    account = rpc.chain.get_account(Pubkey.from_string(token.address))
    assert account is not None
    return check_mint(account.data, program_owner=account.owner, authority=faucet, decimals=6)


def state_of(state_dir: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((state_dir / STATE_FILE).read_text())
    return document


# --------------------------------------------------------------------------- bootstrap


async def test_first_start_sets_up_a_fresh_validator(tmp_path: Path) -> None:
    with validator() as rpc:
        async with adapter_on(rpc, tmp_path) as adapter:
            usdc = adapter.token("USDC")
            assert usdc.decimals == 6
            faucet = Keypair.from_bytes(bytes.fromhex(str(state_of(tmp_path)["faucet_secret"])))
            assert is_zpay_mint(rpc, usdc, faucet.pubkey())
            assert await adapter.fee_payer_lamports() >= FEE_PAYER_LOW_LAMPORTS
            assert rpc.calls.count("requestAirdrop") == 1
            # identity = the validator's genesis hash, on both accessors
            assert adapter.instance_id is not None
            assert adapter.instance_id.startswith("genesis:")
            assert adapter.instance_id == await adapter.chain_instance_id()

        state_file = tmp_path / STATE_FILE
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = state_of(tmp_path)
        assert state["instance_id"] == adapter.instance_id
        assert state["mints"] == {"USDC": {"address": usdc.address, "decimals": 6}}
        fee_payer = Keypair.from_bytes(bytes.fromhex(str(state["fee_payer_secret"])))
        assert str(fee_payer.pubkey()) == adapter.fee_payer_address


async def test_restart_reuses_the_mint_and_the_fee_payer(tmp_path: Path) -> None:
    user = Keypair()
    with validator() as rpc:
        async with adapter_on(rpc, tmp_path) as first:
            usdc = first.token("USDC")
            await first.faucet(str(user.pubkey()), usdc, 7 * USDC)
        calls_before = len(rpc.calls)

        async with adapter_on(rpc, tmp_path) as again:
            assert again.token("USDC") == usdc
            assert again.fee_payer_address == first.fee_payer_address
            assert again.instance_id == first.instance_id
            assert await again.balance(str(user.pubkey()), usdc) == 7 * USDC
            # nothing was created or airdropped the second time
            restart_calls = rpc.calls[calls_before:]
            assert "requestAirdrop" not in restart_calls
            assert "sendTransaction" not in restart_calls


async def test_restart_tops_up_a_drained_fee_payer(tmp_path: Path) -> None:
    with validator() as rpc:
        async with adapter_on(rpc, tmp_path) as first:
            fee_payer = Pubkey.from_string(first.fee_payer_address)
        drained = rpc.chain.get_account(fee_payer)
        assert drained is not None
        # what a long-running deployment does to its fee payer, in one step
        rpc.chain._svm.set_account(fee_payer, _with_lamports(drained, 10_000_000))

        async with adapter_on(rpc, tmp_path) as again:
            assert rpc.calls.count("requestAirdrop") == 2
            assert await again.fee_payer_lamports() >= FEE_PAYER_AIRDROP_LAMPORTS


async def test_concurrent_first_starts_create_one_mint(tmp_path: Path) -> None:
    """The API and the worker share the state directory and start together."""
    with validator() as rpc:
        rpc.pending_polls = 2  # keep the first bootstrap in flight while the other waits
        adapters = await asyncio.gather(*(open_adapter(rpc, tmp_path) for _ in range(3)))
        try:
            assert len({a.token("USDC").address for a in adapters}) == 1
            assert len({a.fee_payer_address for a in adapters}) == 1
            assert rpc.calls.count("requestAirdrop") == 1
            assert rpc.calls.count("sendTransaction") == 1  # the one create-mint
        finally:
            for adapter in adapters:
                await adapter.close()


_START_ONE = """
import asyncio, sys
from pathlib import Path
from zpay.chains.registry import get_network
from zpay.chains.solana import SolanaAdapter

async def main() -> None:
    spec = get_network("solana-local", environ={"ZPAY_RPC_URL_SOLANA_LOCAL": sys.argv[1]})
    adapter = await SolanaAdapter.local_rpc(spec, Path(sys.argv[2]), poll_interval_s=0.01)
    print(adapter.token("USDC").address, adapter.fee_payer_address)
    await adapter.close()

asyncio.run(main())
"""


async def test_two_processes_starting_together_create_one_mint(tmp_path: Path) -> None:
    with validator() as rpc:
        rpc.pending_polls = 2
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _START_ONE,
                rpc.url,
                str(tmp_path),
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = [(await p.communicate())[0].decode().split() for p in processes]
        assert [p.returncode for p in processes] == [0, 0]
        assert outputs[0] == outputs[1]
        assert rpc.calls.count("requestAirdrop") == 1
        assert rpc.calls.count("sendTransaction") == 1


# --------------------------------------------------------------------------- flows


async def test_faucet_approval_payment_and_sweep_over_rpc(tmp_path: Path) -> None:
    user, merchant, treasury = Keypair(), str(Keypair().pubkey()), str(Keypair().pubkey())
    with validator() as rpc:
        rpc.pending_polls = 1  # a real node reports `processed` before `confirmed`
        async with adapter_on(rpc, tmp_path) as adapter:
            usdc = adapter.token("USDC")
            funded = await adapter.faucet(str(user.pubkey()), usdc, 100 * USDC)
            assert funded.amount_base_units == 100 * USDC
            again = await adapter.faucet(str(user.pubkey()), usdc, 100 * USDC)
            assert again.tx_id != funded.tx_id  # two equal faucet calls both mint
            assert await adapter.balance(str(user.pubkey()), usdc) == 200 * USDC

            session = adapter.generate_wallet()
            issued = await adapter.build_approval(
                approval_id="ap_rpc",
                user_wallet=str(user.pubkey()),
                session_wallet=session.address,
                token=usdc,
                amount_base_units=60 * USDC,
            )
            receipt = await adapter.submit_approval(
                issued=issued,
                user_wallet=str(user.pubkey()),
                session_wallet=session.address,
                token=usdc,
                amount_base_units=60 * USDC,
                signed=wallet_sign(issued, user),
            )
            assert receipt.amount_base_units == 60 * USDC

            paid = await adapter.prepare_transfer(
                secret=session.secret,
                source=session.address,
                destination=merchant,
                token=usdc,
                amount_base_units=15 * USDC,
                reference_seed="pay_rpc",
            )
            await adapter.submit_transfer(paid)
            status = await adapter.wait_for_transfer(paid.reference, timeout_s=5.0)
            assert status.state is TransferState.CONFIRMED

            swept = await adapter.sweep(
                secret=session.secret, source=session.address, destination=treasury, token=usdc
            )
            assert swept is not None and swept.amount_base_units == 45 * USDC
            balances = [
                await adapter.balance(owner, usdc)
                for owner in (str(user.pubkey()), session.address, merchant, treasury)
            ]
            assert balances == [140 * USDC, 0, 15 * USDC, 45 * USDC]


async def test_faucet_refuses_a_foreign_mint(tmp_path: Path) -> None:
    with validator() as rpc:
        async with adapter_on(rpc, tmp_path) as adapter:
            usdc = adapter.token("USDC")
            foreign = TokenInfo("USDC", str(Keypair().pubkey()), 6, usdc.max_base_units)
            with pytest.raises(ChainError) as err:
                await adapter.faucet(str(Keypair().pubkey()), foreign, USDC)
            assert err.value.code == "unknown_token"
            with pytest.raises(FlowNotSupported):
                adapter.advance_blockhash()  # a real validator's clock is its own


# --------------------------------------------------------------------------- identity


async def test_another_validator_is_another_instance(tmp_path: Path) -> None:
    with validator() as first_rpc, validator() as second_rpc:
        async with adapter_on(first_rpc, tmp_path / "a") as first:
            first_id, first_mint = first.instance_id, first.token("USDC").address
        async with adapter_on(second_rpc, tmp_path / "b") as second:
            assert second.instance_id != first_id
            assert second.token("USDC").address != first_mint

        # The state set up on the first validator means nothing on the second one.
        with pytest.raises(ChainUnavailable) as err:
            await open_adapter(second_rpc, tmp_path / "a")
        assert err.value.code == "chain_state_mismatch"
        assert first_id is not None and first_id in str(err.value)


async def test_the_embedded_chains_state_is_not_mistaken_for_a_validators(
    tmp_path: Path,
) -> None:
    LocalChain(tmp_path, tokens={"USDC": 6}, fsync=False).close()
    with validator() as rpc:
        with pytest.raises(ChainUnavailable) as err:
            await open_adapter(rpc, tmp_path)
        assert err.value.code == "chain_state_corrupt"
        assert "secret" not in str(err.value)


async def test_public_networks_are_unchanged(tmp_path: Path) -> None:
    """Only a local network sets itself up; an RPC network keeps its registry mint."""
    with validator() as rpc:
        async with adapter_on(rpc, tmp_path) as local:
            mint = local.token("USDC").address
            fee_payer = bytes.fromhex(str(state_of(tmp_path)["fee_payer_secret"]))
        public = SolanaAdapter.rpc(rpc_spec(rpc.url, mint), fee_payer)
        try:
            assert public.instance_id is None
            with pytest.raises(FlowNotSupported):
                await public.faucet(str(Keypair().pubkey()), public.token("USDC"), USDC)
        finally:
            await public.close()
        with pytest.raises(ChainError) as err:
            await SolanaAdapter.local_rpc(rpc_spec(rpc.url, mint), tmp_path / "public")
        assert err.value.code == "invalid_config"
        assert not (tmp_path / "public").exists()


async def test_factory_builds_the_local_rpc_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, confirm_timeout_s=5.0)
    with validator() as rpc:
        monkeypatch.setenv("ZPAY_RPC_URL_SOLANA_LOCAL", rpc.url)
        adapter = await build_adapter("solana-local", settings)
        try:
            assert isinstance(adapter, SolanaAdapter)
            assert adapter.local_chain is None  # not the embedded chain
            assert adapter.instance_id == await adapter.chain_instance_id()
            assert (tmp_path / "chains" / "solana-local" / STATE_FILE).exists()
            user = str(Keypair().pubkey())
            await adapter.faucet(user, adapter.token("USDC"), 3 * USDC)
            assert await adapter.balance(user, adapter.token("USDC")) == 3 * USDC
        finally:
            await adapter.close()


async def test_pairing_refuses_a_database_of_another_validator(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zpay.api.app import build_context
    from zpay.services.bootstrap import ChainPairingError

    with validator() as first_rpc, validator() as second_rpc:
        monkeypatch.setenv("ZPAY_RPC_URL_SOLANA_LOCAL", first_rpc.url)
        ctx = await build_context(settings)
        await ctx.chains.close()
        await ctx.db.dispose()

        # Another validator (and a state directory set up on it) with the same database.
        shutil.rmtree(settings.data_dir / "chains")
        monkeypatch.setenv("ZPAY_RPC_URL_SOLANA_LOCAL", second_rpc.url)
        with pytest.raises(ChainPairingError, match="another solana-local instance"):
            await build_context(settings)


def _with_lamports(account: Account, lamports: int) -> Account:
    return Account(lamports, account.data, account.owner, account.executable, account.rent_epoch)
