"""transfer_status from the chain alone, with the chain as the referee: blocks mined
between the adapter's own reads, time warped past validBefore, relayer transactions that
revert, user transactions that revert or lose their nonce, approvals prepared without
being sent, and renewals of one funding sharing one EIP-3009 nonce. No sleeps, no
wall-clock bounds: every outcome is decided by blocks the test mines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from eth_account import Account

from tests.chains.evm_support import (
    TIMEOUT_S,
    USDC,
    Chain,
    funded_user,
    local_chain,
    mine_after,
    pay,
    sign_typed,
    sign_unsigned,
)
from zpay.chains import evm_tx
from zpay.chains.evm_status import (
    AUTHORIZATION_EXPIRED,
    AUTHORIZATION_USED_ELSEWHERE,
    NONCE_USED_ELSEWHERE,
    TRANSACTION_REVERTED,
)
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalRejected,
    IssuedApproval,
    TransferFailed,
    TransferState,
)


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    async with local_chain() as fresh:
        yield fresh


def approval_args(
    issued: IssuedApproval, user: str, session: str, chain: Chain, amount: int
) -> dict[str, Any]:
    return {
        "issued": issued,
        "user_wallet": user,
        "session_wallet": session,
        "token": chain.usdc,
        "amount_base_units": amount,
    }


# ------------------------------------------------------------- one block, one answer


async def test_a_block_mined_between_the_reads_never_makes_a_payment_failed(
    chain: Chain,
) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
    merchant = chain.adapter.generate_wallet().address
    prepared = await pay(
        chain.adapter,
        session.secret,
        session.address,
        merchant,
        chain.usdc,
        3 * USDC,
        "pay_between",
    )
    await chain.rpc("evm_setAutomine", False)
    await chain.adapter.submit_transfer(prepared)
    assert (await chain.adapter.transfer_status(prepared.reference)).state is (
        TransferState.PENDING
    )
    # The relayer tx gets mined right after the adapter read the block it judges by:
    # that block does not have it yet, so it is still pending (it was sent) — never failed.
    chain.adapter.node.observe(mine_after(chain, ["eth_getBlockByNumber"], times=1))
    try:
        between = await chain.adapter.transfer_status(prepared.reference)
    finally:
        chain.adapter.node.observe(None)
    assert between.state is TransferState.PENDING, between
    done = await chain.adapter.transfer_status(prepared.reference)
    assert done.state is TransferState.CONFIRMED and done.tx_id == between.tx_id
    assert await chain.usdc_of(merchant) == 3 * USDC


async def test_a_block_mined_after_every_read_never_makes_a_payment_failed(
    chain: Chain,
) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
    merchant = chain.adapter.generate_wallet().address
    seen = []
    for i in range(4):
        prepared = await pay(
            chain.adapter,
            session.secret,
            session.address,
            merchant,
            chain.usdc,
            USDC,
            f"pay_every_{i}",
        )
        await chain.rpc("evm_setAutomine", False)
        await chain.adapter.submit_transfer(prepared)
        chain.adapter.node.observe(mine_after(chain))
        try:
            for _ in range(3):
                status = await chain.adapter.transfer_status(prepared.reference)
                seen.append(status.state)
        finally:
            chain.adapter.node.observe(None)
        assert (await chain.adapter.transfer_status(prepared.reference)).state is (
            TransferState.CONFIRMED
        )
    assert TransferState.FAILED not in seen and TransferState.UNKNOWN not in seen, seen
    assert await chain.usdc_of(merchant) == 4 * USDC


async def test_an_unused_authorization_past_valid_before_is_failed(chain: Chain) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 5 * USDC)
    merchant = chain.adapter.generate_wallet().address
    never_sent = await pay(
        chain.adapter, session.secret, session.address, merchant, chain.usdc, USDC, "pay_never_sent"
    )
    stuck = await pay(
        chain.adapter,
        session.secret,
        session.address,
        merchant,
        chain.usdc,
        USDC,
        "pay_stuck_then_expired",
    )
    await chain.rpc("evm_setAutomine", False)
    await chain.adapter.submit_transfer(stuck)
    assert (await chain.adapter.transfer_status(never_sent.reference)).state is (
        TransferState.UNKNOWN
    )
    assert (await chain.adapter.transfer_status(stuck.reference)).state is (TransferState.PENDING)
    assert stuck.valid_until is not None
    # The next block is stamped past validBefore: the stuck relayer tx lands in it and
    # reverts (expired); neither authorization can ever execute any more.
    await chain.rpc("evm_increaseTime", stuck.valid_until)
    await chain.rpc("evm_mine")
    for prepared in (never_sent, stuck):
        status = await chain.adapter.transfer_status(
            prepared.reference, valid_until=prepared.valid_until
        )
        assert status.state is TransferState.FAILED, status
        assert status.error == AUTHORIZATION_EXPIRED
    assert await chain.usdc_of(session.address) == 5 * USDC


async def test_a_reverted_relayer_tx_is_not_a_failure(chain: Chain) -> None:
    """Two payments of the whole balance both pass the pre-flight checks; in the block
    the second one reverts. Its authorization is unused and still valid, so it is not
    failed: once the wallet has funds again, the same prepared transfer settles."""
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 5 * USDC)
    merchant = chain.adapter.generate_wallet().address
    first, second = [
        await pay(
            chain.adapter, session.secret, session.address, merchant, chain.usdc, 5 * USDC, seed
        )
        for seed in ("pay_whole_1", "pay_whole_2")
    ]
    await chain.rpc("evm_setAutomine", False)
    await chain.adapter.submit_transfer(first)
    await chain.adapter.submit_transfer(second)
    start = int(await chain.w3.eth.block_number)
    await chain.rpc("evm_mine")
    await chain.rpc("evm_setAutomine", True)
    assert sorted(tx["status"] for tx in await chain.relayer_txs(start)) == [0, 1]
    assert (await chain.adapter.transfer_status(first.reference)).state is (TransferState.CONFIRMED)
    assert (await chain.adapter.transfer_status(second.reference)).state is (TransferState.UNKNOWN)
    await chain.adapter.faucet(session.address, chain.usdc, 5 * USDC)
    await chain.adapter.submit_transfer(second)
    status = await chain.adapter.wait_for_transfer(second.reference, timeout_s=TIMEOUT_S)
    assert status.state is TransferState.CONFIRMED
    assert await chain.usdc_of(merchant) == 10 * USDC


# ------------------------------------------------------------------ approvals, prepared


async def test_prepare_approval_sends_nothing_and_submit_transfer_finishes_it(
    chain: Chain,
) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_prepared",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=40 * USDC,
    )
    args = approval_args(issued, user.address, session.address, chain, 40 * USDC)
    relayer_nonce = await chain.account_nonce(chain.adapter.relayer_address, "pending")
    prepared = await chain.adapter.prepare_approval(**args, signed=sign_typed(user, issued))
    assert prepared.valid_until == int(issued.private["authorization"]["validBefore"])
    assert await chain.account_nonce(chain.adapter.relayer_address, "pending") == relayer_nonce
    assert (await chain.adapter.transfer_status(prepared.reference)).state is (
        TransferState.UNKNOWN
    )
    await chain.adapter.submit_transfer(prepared)
    status = await chain.adapter.wait_for_transfer(
        prepared.reference, timeout_s=TIMEOUT_S, valid_until=prepared.valid_until
    )
    assert status.state is TransferState.CONFIRMED and status.tx_id
    assert await chain.usdc_of(session.address) == 40 * USDC
    # Lapsed since, but landed: returned all the same, and its status says so.
    await chain.rpc("evm_increaseTime", 2 * 3600)
    await chain.rpc("evm_mine")
    again = await chain.adapter.prepare_approval(**args, signed=sign_typed(user, issued))
    assert again == prepared
    assert (await chain.adapter.transfer_status(again.reference)) == status


async def test_renewals_share_one_nonce_and_fund_at_most_once(chain: Chain) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()

    async def renewal() -> tuple[IssuedApproval, dict[str, Any]]:
        await chain.rpc("evm_increaseTime", 60)  # a later validBefore for each version
        await chain.rpc("evm_mine")
        issued = await chain.adapter.build_approval(
            approval_id="apr_funding_1",
            user_wallet=user.address,
            session_wallet=session.address,
            token=chain.usdc,
            amount_base_units=25 * USDC,
        )
        return issued, approval_args(issued, user.address, session.address, chain, 25 * USDC)

    (v1, args1), (v2, args2) = await renewal(), await renewal()
    assert (
        v1.public["typed_data"]["message"]["nonce"] == v2.public["typed_data"]["message"]["nonce"]
    )
    first = await chain.adapter.prepare_approval(**args1, signed=sign_typed(user, v1))
    second = await chain.adapter.prepare_approval(**args2, signed=sign_typed(user, v2))
    assert first.reference != second.reference
    await chain.adapter.submit_transfer(second)
    landed = await chain.adapter.wait_for_transfer(second.reference, timeout_s=TIMEOUT_S)
    assert landed.state is TransferState.CONFIRMED
    # The other version — and one issued after the first landed — are reported as landed
    # by that same transaction; sending them sends nothing.
    relayer_nonce = await chain.account_nonce(chain.adapter.relayer_address, "pending")
    (v3, args3) = await renewal()
    third = await chain.adapter.prepare_approval(**args3, signed=sign_typed(user, v3))
    for other in (first, third):
        await chain.adapter.submit_transfer(other)
        assert await chain.adapter.transfer_status(other.reference) == landed
    assert await chain.account_nonce(chain.adapter.relayer_address, "pending") == relayer_nonce
    assert await chain.usdc_of(session.address) == 25 * USDC
    # A version for another amount can never land: the nonce funded 25, not 30.
    other_amount = await chain.adapter.build_approval(
        approval_id="apr_funding_1",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=30 * USDC,
    )
    with pytest.raises(ApprovalRejected):
        await chain.adapter.prepare_approval(
            **approval_args(other_amount, user.address, session.address, chain, 30 * USDC),
            signed=sign_typed(user, other_amount),
        )
    assert await chain.usdc_of(session.address) == 25 * USDC


async def test_an_approval_nonce_spent_elsewhere_by_the_user_is_failed(chain: Chain) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_spent_elsewhere",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
    )
    args = approval_args(issued, user.address, session.address, chain, 10 * USDC)
    prepared = await chain.adapter.prepare_approval(**args, signed=sign_typed(user, issued))
    # Before zpay sends it, the user spends the same nonce on another transfer.
    other = evm_tx.Authorization.from_json(issued.public["typed_data"]["message"])
    other = evm_tx.Authorization(
        other.from_address, evm_tx.checksum("0x" + "99" * 20), 1, 0, other.valid_before, other.nonce
    )
    domain = evm_tx.TokenDomain("Zpay Test USD", "2", 31337, chain.usdc.address)
    data = evm_tx.encode_transfer_with_authorization(
        evm_tx.sign_authorization(user.secret, domain, other)
    )
    assert await chain.relayer_tx_behind_the_adapters_back(chain.usdc.address, data, 200_000) == 1
    status = await chain.adapter.transfer_status(prepared.reference)
    assert status.state is TransferState.FAILED
    assert status.error == AUTHORIZATION_USED_ELSEWHERE
    with pytest.raises(ApprovalRejected):
        await chain.adapter.prepare_approval(**args, signed=sign_typed(user, issued))
    assert await chain.usdc_of(session.address) == 0


# ---------------------------------------------------------- user-signed transactions


async def test_a_transaction_approval_is_prepared_sent_and_confirmed(chain: Chain) -> None:
    user = await funded_user(chain)
    await chain.give_eth(user.address)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_tx_prepared",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=7 * USDC,
        method="transaction",
    )
    args = approval_args(issued, user.address, session.address, chain, 7 * USDC)
    prepared = await chain.adapter.prepare_approval(
        **args, signed=sign_unsigned(user.secret, issued)
    )
    assert prepared.reference.startswith("tx:") and prepared.payload[:1] == b"\x02"
    assert prepared.valid_until is None
    assert (await chain.adapter.transfer_status(prepared.reference)).state is (
        TransferState.UNKNOWN
    )
    await chain.rpc("evm_setAutomine", False)
    await chain.adapter.submit_transfer(prepared)
    await chain.adapter.submit_transfer(prepared)  # again: the node has it already
    chain.adapter.node.observe(mine_after(chain, times=1))
    try:
        between = await chain.adapter.transfer_status(prepared.reference)
    finally:
        chain.adapter.node.observe(None)
    assert between.state is TransferState.PENDING, between
    status = await chain.adapter.transfer_status(prepared.reference)
    assert status.state is TransferState.CONFIRMED
    assert await chain.usdc_of(session.address) == 7 * USDC


async def test_a_reverted_or_superseded_user_transaction_is_failed(chain: Chain) -> None:
    user = await funded_user(chain, usdc=5 * USDC)
    await chain.give_eth(user.address)
    session = chain.adapter.generate_wallet()

    async def approval(approval_id: str, amount: int) -> tuple[dict[str, Any], Any]:
        issued = await chain.adapter.build_approval(
            approval_id=approval_id,
            user_wallet=user.address,
            session_wallet=session.address,
            token=chain.usdc,
            amount_base_units=amount,
            method="transaction",
        )
        args = approval_args(issued, user.address, session.address, chain, amount)
        signed = sign_unsigned(user.secret, issued, gas=100_000)
        return args, signed

    # More than the user holds: zpay refuses to send it (nothing moves) ...
    args, signed = await approval("apr_tx_poor", 6 * USDC)
    prepared = await chain.adapter.prepare_approval(**args, signed=signed)
    with pytest.raises(TransferFailed):
        await chain.adapter.submit_transfer(prepared)
    # ... but the user's wallet broadcasts it anyway: mined, reverted, nonce consumed.
    raw = bytes.fromhex(signed["signed_transaction"][2:])
    assert await chain.broadcast(raw, evm_tx.decode_signed_transaction(raw).tx_hash) == 0
    status = await chain.adapter.transfer_status(prepared.reference)
    assert status.state is TransferState.FAILED and status.error == TRANSACTION_REVERTED
    with pytest.raises(ApprovalRejected):
        await chain.adapter.prepare_approval(**args, signed=signed)
    # Another approval whose nonce the user spends on something else first.
    args, signed = await approval("apr_tx_superseded", 2 * USDC)
    prepared = await chain.adapter.prepare_approval(**args, signed=signed)
    nonce = evm_tx.decode_signed_transaction(bytes.fromhex(signed["signed_transaction"][2:]))
    other = Account.sign_transaction(
        {
            "type": 2,
            "chainId": 31337,
            "nonce": nonce.nonce,
            "to": user.address,
            "value": 0,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        },
        user.secret,
    )
    assert (
        await chain.broadcast(
            bytes(other.raw_transaction), "0x" + bytes(cast(Any, other).hash).hex()
        )
        == 1
    )
    status = await chain.adapter.transfer_status(prepared.reference)
    assert status.state is TransferState.FAILED and status.error == NONCE_USED_ELSEWHERE
    with pytest.raises(ApprovalExpired):
        await chain.adapter.prepare_approval(**args, signed=signed)
    await chain.adapter.submit_transfer(prepared)  # sends nothing: it can never land
    assert await chain.usdc_of(session.address) == 0
    assert await chain.usdc_of(user.address) == 5 * USDC
