"""One suite, two networks: the embedded LiteSVM chain and the JSON-RPC path (solana-py's
AsyncClient against a fake node over LiteSVM)."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID

from tests.chains.solana_support import (
    BACKENDS,
    SolanaEnv,
    approval_tx,
    open_env,
    rebuild,
    rpc_spec,
    sign_message_as,
    transfer_destination,
    wallet_sign,
)
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ApprovalSignatureInvalid,
    ChainAdapter,
    ChainError,
    ChainReceipt,
    ChainUnavailable,
    ConfirmationTimeout,
    FlowNotSupported,
    GeneratedWallet,
    InvalidAddress,
    IssuedApproval,
    PreparedTransfer,
    TransferFailed,
    TransferState,
)
from zpay.chains.registry import NetworkSpec
from zpay.chains.solana import APPROVAL_FORMAT, SolanaAdapter
from zpay.chains.solana_tx import MEMO_PROGRAM_ID, associated_token_address

USDC = 10**6


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[SolanaEnv]:
    async with open_env(request.param) as e:
        yield e


async def _issue(
    env: SolanaEnv, user: Keypair, session: str, amount: int, approval_id: str = "ap_1"
) -> IssuedApproval:
    return await env.adapter.build_approval(
        approval_id=approval_id,
        user_wallet=str(user.pubkey()),
        session_wallet=session,
        token=env.usdc,
        amount_base_units=amount,
    )


async def _submit(
    env: SolanaEnv,
    issued: IssuedApproval,
    user: Keypair | Pubkey,
    session: str,
    amount: int,
    signed: dict[str, str],
) -> ChainReceipt:
    owner = user.pubkey() if isinstance(user, Keypair) else user
    return await env.adapter.submit_approval(
        issued=issued,
        user_wallet=str(owner),
        session_wallet=session,
        token=env.usdc,
        amount_base_units=amount,
        signed=signed,
    )


async def _funded_user(env: SolanaEnv, amount: int = 1_000 * USDC) -> Keypair:
    user = Keypair()
    await env.fund(str(user.pubkey()), amount)
    return user


# --------------------------------------------------------------------------- basics


async def test_adapter_implements_the_protocol(env: SolanaEnv) -> None:
    assert isinstance(env.adapter, ChainAdapter)
    assert env.usdc.decimals == 6
    assert env.usdc.max_base_units == 2**64 - 1
    with pytest.raises(ChainError) as err:
        env.adapter.token("DOGE")
    assert err.value.code == "unknown_token"


async def test_generate_wallet_returns_the_64_byte_keypair(env: SolanaEnv) -> None:
    wallet = env.adapter.generate_wallet()
    assert len(wallet.secret) == 64
    assert str(Keypair.from_bytes(wallet.secret).pubkey()) == wallet.address
    assert env.adapter.generate_wallet().address != wallet.address


@pytest.mark.parametrize(
    "address",
    [
        "",
        "abc",
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl",  # not base58
        "1" * 45,
        "3yZe7d" * 10,  # too long
        "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4",  # 31 bytes
    ],
)
async def test_invalid_addresses_are_refused(env: SolanaEnv, address: str) -> None:
    with pytest.raises(InvalidAddress):
        env.adapter.validate_address(address)


async def test_valid_address_is_returned_canonical(env: SolanaEnv) -> None:
    address = str(Keypair().pubkey())
    assert env.adapter.validate_address(address) == address
    with pytest.raises(InvalidAddress):
        env.adapter.validate_address(f" {address}")
    with pytest.raises(InvalidAddress):
        env.adapter.validate_address(f"{address}\n")


async def test_invalid_addresses_refused_by_every_operation(env: SolanaEnv) -> None:
    session = env.adapter.generate_wallet()
    with pytest.raises(InvalidAddress):
        await env.adapter.build_approval(
            approval_id="a",
            user_wallet="nope",
            session_wallet=session.address,
            token=env.usdc,
            amount_base_units=1,
        )
    with pytest.raises(InvalidAddress):
        await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination="0xdeadbeef",
            token=env.usdc,
            amount_base_units=1,
            reference_seed="p",
        )
    with pytest.raises(InvalidAddress):
        await env.adapter.balance("not-an-address", env.usdc)


async def test_balance_of_a_wallet_without_token_account_is_zero(env: SolanaEnv) -> None:
    assert await env.adapter.balance(str(Keypair().pubkey()), env.usdc) == 0


@pytest.mark.parametrize("amount", [0, -1, 2**64, True])
async def test_amounts_out_of_range_are_refused(env: SolanaEnv, amount: int) -> None:
    user, session = Keypair(), env.adapter.generate_wallet()
    with pytest.raises(ChainError) as err:
        await _issue(env, user, session.address, amount)
    assert err.value.code == "invalid_amount"


# --------------------------------------------------------------------------- approvals


async def test_approval_happy_path(env: SolanaEnv) -> None:
    user = await _funded_user(env, 1_000 * USDC)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, 400 * USDC)

    public = issued.public
    assert public["format"] == APPROVAL_FORMAT
    assert public["fee_payer"] == env.adapter.fee_payer_address
    tx = approval_tx(issued)
    assert str(tx.message.recent_blockhash) == public["recent_blockhash"]
    # the platform pays the fees; the user only signs; nothing is signed yet
    assert tx.message.account_keys[0] == Pubkey.from_string(public["fee_payer"])
    assert tx.message.header.num_required_signatures == 2
    assert tx.message.account_keys[1] == user.pubkey()
    assert all(sig == Signature.default() for sig in tx.signatures)
    programs = [tx.message.account_keys[ix.program_id_index] for ix in tx.message.instructions]
    assert programs[1:] == [TOKEN_PROGRAM_ID, MEMO_PROGRAM_ID]
    assert transfer_destination(tx) == associated_token_address(
        Pubkey.from_string(session.address), Pubkey.from_string(env.usdc.address)
    )
    # the private part is JSON-serialisable and holds no secret
    assert set(issued.private) >= {"message", "recent_blockhash", "last_valid_block_height"}

    receipt = await _submit(
        env, issued, user, session.address, 400 * USDC, wallet_sign(issued, user)
    )
    assert receipt.amount_base_units == 400 * USDC
    assert await env.balances(str(user.pubkey()), session.address) == [600 * USDC, 400 * USDC]
    status = await env.adapter.transfer_status(receipt.tx_id)
    assert status.state is TransferState.CONFIRMED


@pytest.mark.parametrize("tamper", ["amount", "destination", "other_signer", "not_signed"])
async def test_tampered_approval_is_refused_and_nothing_moves(env: SolanaEnv, tamper: str) -> None:
    user = await _funded_user(env)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, 100 * USDC)
    tx = approval_tx(issued)
    if tamper == "amount":
        message = rebuild(tx, data=lambda raw: raw[:1] + struct.pack("<Q", 900 * USDC) + raw[9:])
        body = sign_message_as(message, user, tx)
    elif tamper == "destination":
        message = rebuild(tx, key_swap=(transfer_destination(tx), Keypair().pubkey()))
        body = sign_message_as(message, user, tx)
    elif tamper == "other_signer":
        signatures = list(tx.signatures)
        signatures[1] = Keypair().sign_message(bytes(tx.message))
        body = {
            "signed_transaction": base64.b64encode(
                bytes(Transaction.populate(tx.message, signatures))
            ).decode()
        }
    else:
        body = {"signed_transaction": issued.public["approval_transaction"]}
    before = await env.balances(str(user.pubkey()), session.address)

    expected = ApprovalMismatch if tamper in ("amount", "destination") else ApprovalSignatureInvalid
    with pytest.raises(expected):
        await _submit(env, issued, user, session.address, 100 * USDC, body)
    assert await env.balances(str(user.pubkey()), session.address) == before
    # the genuine approval still works afterwards
    await _submit(env, issued, user, session.address, 100 * USDC, wallet_sign(issued, user))
    assert await env.balances(session.address) == [100 * USDC]


@pytest.mark.parametrize("garbage", ["", "not base64!", base64.b64encode(b"\x01abc").decode()])
async def test_garbage_signed_transaction_is_a_mismatch(env: SolanaEnv, garbage: str) -> None:
    user = await _funded_user(env)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, USDC)
    with pytest.raises(ApprovalMismatch):
        await _submit(env, issued, user, session.address, USDC, {"signed_transaction": garbage})
    with pytest.raises(ApprovalMismatch):
        await _submit(env, issued, user, session.address, USDC, {})


async def test_approval_of_wallet_a_against_the_issued_approval_of_b(env: SolanaEnv) -> None:
    user_a, user_b = await _funded_user(env), await _funded_user(env)
    session_a, session_b = env.adapter.generate_wallet(), env.adapter.generate_wallet()
    issued_a = await _issue(env, user_a, session_a.address, 10 * USDC, "ap_a")
    issued_b = await _issue(env, user_b, session_b.address, 10 * USDC, "ap_b")
    signed_a = wallet_sign(issued_a, user_a)
    before = await env.balances(
        str(user_a.pubkey()), str(user_b.pubkey()), session_a.address, session_b.address
    )

    # A's signed approval submitted for B's session key
    with pytest.raises(ApprovalMismatch):
        await _submit(env, issued_b, user_b, session_b.address, 10 * USDC, signed_a)
    # B's issued approval passed along with A's parameters (a service mix-up)
    with pytest.raises(ApprovalMismatch):
        await _submit(env, issued_b, user_a, session_a.address, 10 * USDC, signed_a)
    # the right approval, but the caller claims another amount
    with pytest.raises(ApprovalMismatch):
        await _submit(env, issued_a, user_a, session_a.address, 11 * USDC, signed_a)
    assert (
        await env.balances(
            str(user_a.pubkey()), str(user_b.pubkey()), session_a.address, session_b.address
        )
        == before
    )


async def test_lapsed_blockhash_gives_approval_expired_then_a_fresh_one_works(
    env: SolanaEnv,
) -> None:
    user = await _funded_user(env, 50 * USDC)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, 20 * USDC)
    signed = wallet_sign(issued, user)
    env.advance_blockhash()

    with pytest.raises(ApprovalExpired):
        await _submit(env, issued, user, session.address, 20 * USDC, signed)
    assert await env.balances(str(user.pubkey()), session.address) == [50 * USDC, 0]

    fresh = await _issue(env, user, session.address, 20 * USDC)
    assert fresh.public["approval_transaction"] != issued.public["approval_transaction"]
    await _submit(env, fresh, user, session.address, 20 * USDC, wallet_sign(fresh, user))
    assert await env.balances(str(user.pubkey()), session.address) == [30 * USDC, 20 * USDC]
    # the lapsed one stays dead: nothing is ever funded twice
    with pytest.raises(ApprovalExpired):
        await _submit(env, issued, user, session.address, 20 * USDC, signed)
    assert await env.balances(session.address) == [20 * USDC]


async def test_same_signed_approval_twice_moves_funds_once(env: SolanaEnv) -> None:
    user = await _funded_user(env, 100 * USDC)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, 30 * USDC)
    signed = wallet_sign(issued, user)

    first = await _submit(env, issued, user, session.address, 30 * USDC, signed)
    second = await _submit(env, issued, user, session.address, 30 * USDC, signed)
    assert first == second
    # even once its blockhash has lapsed, a landed approval is reported, not expired
    env.advance_blockhash()
    third = await _submit(env, issued, user, session.address, 30 * USDC, signed)
    assert third == first
    assert await env.balances(str(user.pubkey()), session.address) == [70 * USDC, 30 * USDC]


async def test_top_ups_with_the_same_amount_are_distinct_approvals(env: SolanaEnv) -> None:
    user = await _funded_user(env, 100 * USDC)
    session = env.adapter.generate_wallet()
    await env.approve(user, session.address, 10 * USDC, approval_id="ap_1")
    await env.approve(user, session.address, 10 * USDC, approval_id="topup_1")
    assert await env.balances(session.address) == [20 * USDC]


async def test_user_without_funds_is_rejected_nothing_moves(env: SolanaEnv) -> None:
    user = await _funded_user(env, 5 * USDC)
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, 10 * USDC)
    signed = wallet_sign(issued, user)
    with pytest.raises(ApprovalRejected):
        await _submit(env, issued, user, session.address, 10 * USDC, signed)
    assert await env.balances(str(user.pubkey()), session.address) == [5 * USDC, 0]
    # once the user holds enough, the same signed approval goes through (blockhash still valid)
    await env.fund(str(user.pubkey()), 5 * USDC)
    await _submit(env, issued, user, session.address, 10 * USDC, signed)
    assert await env.balances(str(user.pubkey()), session.address) == [0, 10 * USDC]


async def test_user_without_token_account_is_rejected(env: SolanaEnv) -> None:
    user = Keypair()
    session = env.adapter.generate_wallet()
    issued = await _issue(env, user, session.address, USDC)
    with pytest.raises(ApprovalRejected):
        await _submit(env, issued, user, session.address, USDC, wallet_sign(issued, user))


# --------------------------------------------------------------------------- transfers


async def _funded_session(env: SolanaEnv, amount: int) -> tuple[Keypair, GeneratedWallet]:
    user = await _funded_user(env, amount)
    session = env.adapter.generate_wallet()
    await env.approve(user, session.address, amount)
    return user, session


async def test_transfer_is_unique_per_seed_and_identical_amounts_both_land(
    env: SolanaEnv,
) -> None:
    _, session = await _funded_session(env, 100 * USDC)
    merchant = str(Keypair().pubkey())

    async def prepare(seed: str) -> PreparedTransfer:
        return await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=merchant,
            token=env.usdc,
            amount_base_units=7 * USDC,
            reference_seed=seed,
        )

    first, second = await prepare("key_1:pay_1"), await prepare("key_1:pay_2")
    assert first.reference != second.reference
    # the same seed with the same blockhash is the same transaction: it can only land once
    again = await prepare("key_1:pay_1")
    assert again.reference == first.reference

    for prepared in (first, second, again):
        await env.adapter.submit_transfer(prepared)
    assert await env.balances(merchant, session.address) == [14 * USDC, 86 * USDC]


async def test_resubmitting_a_prepared_transfer_moves_once(env: SolanaEnv) -> None:
    _, session = await _funded_session(env, 50 * USDC)
    merchant = str(Keypair().pubkey())
    prepared = await env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=env.usdc,
        amount_base_units=20 * USDC,
        reference_seed="pay_1",
    )
    assert (await env.adapter.transfer_status(prepared.reference)).state is TransferState.UNKNOWN
    await env.adapter.submit_transfer(prepared)
    await env.adapter.submit_transfer(prepared)
    status = await env.adapter.wait_for_transfer(prepared.reference, timeout_s=5)
    assert status.state is TransferState.CONFIRMED
    assert status.tx_id == prepared.reference
    assert (await env.adapter.transfer_status(prepared.reference)).state is TransferState.CONFIRMED
    # even after its blockhash lapsed
    env.advance_blockhash()
    await env.adapter.submit_transfer(prepared)
    assert await env.balances(merchant, session.address) == [20 * USDC, 30 * USDC]


async def test_transfer_beyond_the_balance_fails_and_nothing_moves(env: SolanaEnv) -> None:
    _, session = await _funded_session(env, 10 * USDC)
    merchant = str(Keypair().pubkey())
    prepared = await env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=env.usdc,
        amount_base_units=11 * USDC,
        reference_seed="pay_big",
    )
    with pytest.raises(TransferFailed):
        await env.adapter.submit_transfer(prepared)
    assert await env.balances(merchant, session.address) == [0, 10 * USDC]
    assert (await env.adapter.transfer_status(prepared.reference)).state is TransferState.UNKNOWN


async def test_prepared_transfer_whose_blockhash_lapsed_fails_for_good(env: SolanaEnv) -> None:
    _, session = await _funded_session(env, 10 * USDC)
    merchant = str(Keypair().pubkey())
    prepared = await env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=env.usdc,
        amount_base_units=USDC,
        reference_seed="pay_late",
    )
    env.advance_blockhash()
    status = await env.adapter.transfer_status(prepared.reference)
    assert status.state is TransferState.FAILED
    assert status.error is not None and status.error.startswith("expired")
    with pytest.raises(TransferFailed):
        await env.adapter.submit_transfer(prepared)
    assert await env.balances(merchant) == [0]


async def test_transfer_with_the_wrong_secret_is_refused_without_leaking_it(
    env: SolanaEnv,
) -> None:
    _, session = await _funded_session(env, USDC)
    other = env.adapter.generate_wallet()
    with pytest.raises(ChainError) as err:
        await env.adapter.prepare_transfer(
            secret=other.secret,
            source=session.address,
            destination=str(Keypair().pubkey()),
            token=env.usdc,
            amount_base_units=1,
            reference_seed="p",
        )
    assert err.value.code == "wallet_mismatch"
    assert other.secret.hex() not in str(err.value)
    with pytest.raises(ChainError) as err:
        await env.adapter.prepare_transfer(
            secret=b"\x01" * 63,
            source=session.address,
            destination=str(Keypair().pubkey()),
            token=env.usdc,
            amount_base_units=1,
            reference_seed="p",
        )
    assert err.value.code == "invalid_wallet_secret"


async def test_unknown_reference_is_unknown_and_garbage_is_refused(env: SolanaEnv) -> None:
    status = await env.adapter.transfer_status(str(Signature.new_unique()))
    assert status.state is TransferState.UNKNOWN
    with pytest.raises(ChainError) as err:
        await env.adapter.transfer_status("pay_123")
    assert err.value.code == "invalid_reference"


# --------------------------------------------------------------------------- sweep


async def test_sweep_returns_exactly_the_balance_and_closes_the_account(env: SolanaEnv) -> None:
    user, session = await _funded_session(env, 100 * USDC)
    merchant = str(Keypair().pubkey())
    prepared = await env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=env.usdc,
        amount_base_units=33_333_333,
        reference_seed="pay_1",
    )
    await env.adapter.submit_transfer(prepared)
    lamports_before = await env.adapter.fee_payer_lamports()

    receipt = await env.adapter.sweep(
        secret=session.secret,
        source=session.address,
        destination=str(user.pubkey()),
        token=env.usdc,
    )
    assert receipt is not None
    assert receipt.amount_base_units == 100 * USDC - 33_333_333
    assert await env.balances(str(user.pubkey()), session.address, merchant) == [
        100 * USDC - 33_333_333,
        0,
        33_333_333,
    ]
    session_ata = associated_token_address(
        Pubkey.from_string(session.address),
        Pubkey.from_string(env.usdc.address),
    )
    assert env.chain.get_account(session_ata) is None
    # the rent of the closed account went back to the fee payer (minus the fee)
    assert await env.adapter.fee_payer_lamports() > lamports_before
    assert (await env.adapter.transfer_status(receipt.tx_id)).state is TransferState.CONFIRMED
    # nothing left: a second sweep is a no-op
    assert (
        await env.adapter.sweep(
            secret=session.secret,
            source=session.address,
            destination=str(user.pubkey()),
            token=env.usdc,
        )
        is None
    )


async def test_sweep_of_an_empty_account_closes_it_and_returns_none(env: SolanaEnv) -> None:
    user, session = await _funded_session(env, 5 * USDC)
    await env.adapter.submit_transfer(
        await env.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=str(Keypair().pubkey()),
            token=env.usdc,
            amount_base_units=5 * USDC,
            reference_seed="all",
        )
    )
    result = await env.adapter.sweep(
        secret=session.secret,
        source=session.address,
        destination=str(user.pubkey()),
        token=env.usdc,
    )
    assert result is None
    session_ata = associated_token_address(
        Pubkey.from_string(session.address),
        Pubkey.from_string(env.usdc.address),
    )
    assert env.chain.get_account(session_ata) is None


async def test_sweep_of_a_never_funded_wallet_is_none(env: SolanaEnv) -> None:
    session = env.adapter.generate_wallet()
    assert (
        await env.adapter.sweep(
            secret=session.secret,
            source=session.address,
            destination=str(Keypair().pubkey()),
            token=env.usdc,
        )
        is None
    )


# --------------------------------------------------------------------------- per-network


async def test_faucet_only_on_local_networks(env: SolanaEnv) -> None:
    owner = str(Keypair().pubkey())
    if env.kind == "local":
        receipt = await env.adapter.faucet(owner, env.usdc, 12 * USDC)
        assert receipt.amount_base_units == 12 * USDC
        # two identical faucet calls both mint
        await env.adapter.faucet(owner, env.usdc, 12 * USDC)
        assert await env.balances(owner) == [24 * USDC]
    else:
        with pytest.raises(FlowNotSupported):
            await env.adapter.faucet(owner, env.usdc, 12 * USDC)
        with pytest.raises(FlowNotSupported):
            env.adapter.advance_blockhash()


async def test_chain_instance_id(env: SolanaEnv) -> None:
    identity = await env.adapter.chain_instance_id()
    if env.kind == "local":
        assert identity == env.adapter.instance_id == env.chain.instance_id
    else:
        assert env.adapter.instance_id is None
        assert identity.startswith("genesis:")


# --------------------------------------------------------------------------- RPC-only


@pytest.fixture
async def rpc_env() -> AsyncIterator[SolanaEnv]:
    async with open_env("rpc") as e:
        yield e


async def test_rpc_waits_for_the_configured_commitment(rpc_env: SolanaEnv) -> None:
    assert rpc_env.rpc is not None
    _, session = await _funded_session(rpc_env, 10 * USDC)
    rpc_env.rpc.pending_polls = 3
    prepared = await rpc_env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=str(Keypair().pubkey()),
        token=rpc_env.usdc,
        amount_base_units=USDC,
        reference_seed="slow",
    )
    await rpc_env.adapter.submit_transfer(prepared)
    status = await rpc_env.adapter.wait_for_transfer(prepared.reference, timeout_s=0)
    assert status.state is TransferState.PENDING
    status = await rpc_env.adapter.wait_for_transfer(prepared.reference, timeout_s=5)
    assert status.state is TransferState.CONFIRMED


async def test_rpc_dropped_transfer_is_failed_once_its_blockhash_lapsed(
    rpc_env: SolanaEnv,
) -> None:
    assert rpc_env.rpc is not None
    _, session = await _funded_session(rpc_env, 10 * USDC)
    rpc_env.rpc.drop_next_sends = 1
    merchant = str(Keypair().pubkey())
    prepared = await rpc_env.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=rpc_env.usdc,
        amount_base_units=USDC,
        reference_seed="dropped",
    )
    await rpc_env.adapter.submit_transfer(prepared)
    status = await rpc_env.adapter.wait_for_transfer(prepared.reference, timeout_s=0.05)
    assert status.state is TransferState.UNKNOWN  # not seen, but could still land
    rpc_env.advance_blockhash()
    status = await rpc_env.adapter.wait_for_transfer(prepared.reference, timeout_s=5)
    assert status.state is TransferState.FAILED
    assert await rpc_env.balances(merchant) == [0]


async def test_rpc_approval_confirmation_timeout_then_resubmission(rpc_env: SolanaEnv) -> None:
    assert rpc_env.rpc is not None
    user = await _funded_user(rpc_env, 10 * USDC)
    session = rpc_env.adapter.generate_wallet()
    issued = await _issue(rpc_env, user, session.address, 4 * USDC)
    signed = wallet_sign(issued, user)
    rpc_env.rpc.pending_polls = 10**6
    adapter = SolanaAdapter.rpc(
        _spec_of(rpc_env),
        bytes(rpc_env.chain.fee_payer),
        confirm_timeout_s=0.1,
        poll_interval_s=0.01,
    )
    try:
        with pytest.raises(ConfirmationTimeout):
            await adapter.submit_approval(
                issued=issued,
                user_wallet=str(user.pubkey()),
                session_wallet=session.address,
                token=rpc_env.usdc,
                amount_base_units=4 * USDC,
                signed=signed,
            )
    finally:
        await adapter.close()
    rpc_env.rpc.pending_polls = 0
    rpc_env.rpc._polls_left.clear()
    receipt = await _submit(rpc_env, issued, user, session.address, 4 * USDC, signed)
    assert receipt.amount_base_units == 4 * USDC
    assert await rpc_env.balances(session.address) == [4 * USDC]


async def test_rpc_unreachable_is_chain_unavailable(rpc_env: SolanaEnv) -> None:
    adapter = SolanaAdapter.rpc(
        _spec_of(rpc_env, url="http://127.0.0.1:9"),
        bytes(Keypair()),
        poll_interval_s=0.01,
        request_timeout_s=2,
    )
    try:
        with pytest.raises(ChainUnavailable):
            await adapter.balance(str(Keypair().pubkey()), rpc_env.usdc)
        with pytest.raises(ChainUnavailable):
            await adapter.build_approval(
                approval_id="a",
                user_wallet=str(Keypair().pubkey()),
                session_wallet=str(Keypair().pubkey()),
                token=rpc_env.usdc,
                amount_base_units=1,
            )
    finally:
        await adapter.close()


def _spec_of(env: SolanaEnv, url: str | None = None) -> NetworkSpec:
    assert env.rpc is not None
    return rpc_spec(url or env.rpc.url, env.usdc.address)
