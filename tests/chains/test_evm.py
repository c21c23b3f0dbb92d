"""EvmAdapter against a REAL anvil process (from `npm install` at the repo root).

Nothing here skips: without anvil the fixtures fail, because an EVM family that was
never exercised against a node is not tested. Helpers live in `evm_support` (the
package's conftest belongs to the Solana suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from tests.chains.evm_support import (
    TIMEOUT_S,
    USDC,
    Chain,
    evm_local,
    funded_user,
    local_chain,
    pay,
    sign_typed,
    sign_unsigned,
)
from zpay.chains import evm_tx
from zpay.chains.anvil import AnvilNotFound, AnvilProcess, find_anvil_binary
from zpay.chains.evm import EvmAdapter, EvmOptions
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ApprovalSignatureInvalid,
    ChainAdapter,
    ChainUnavailable,
    FlowNotSupported,
    IssuedApproval,
    TransferFailed,
    TransferState,
)
from zpay.chains.registry import get_network


@pytest.fixture(scope="module")
async def chain() -> AsyncIterator[Chain]:
    async with local_chain() as shared:
        yield shared


# -------------------------------------------------------------- set-up & process


def test_eth_keys_uses_the_coincurve_backend() -> None:
    assert evm_tx.ecc_backend_name() == "CoinCurveECCBackend"


def test_anvil_binary_comes_from_npm_install() -> None:
    path = find_anvil_binary(environ={"PATH": ""})
    assert "node_modules" in path.parts and path.name.startswith("anvil")
    with pytest.raises(AnvilNotFound):
        find_anvil_binary(environ={"ZPAY_ANVIL_BIN": "/nonexistent/anvil"})
    with pytest.raises(AnvilNotFound):
        find_anvil_binary(environ={"PATH": ""}, search_roots=[Path("/nonexistent")])


def test_anvil_process_starts_and_stops_cleanly() -> None:
    with AnvilProcess(chain_id=31337) as anvil:
        pid = anvil.pid
        assert anvil.running and anvil.rpc_url.startswith("http://127.0.0.1:")
    assert pid is not None and not anvil.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_local_setup_deploys_the_token_once(chain: Chain) -> None:
    assert isinstance(chain.adapter, ChainAdapter)
    usdc = chain.usdc
    assert usdc.address == evm_tx.contract_address(chain.adapter.relayer_address, 0)
    assert usdc.decimals == 6 and usdc.eip712_name == "Zpay Test USD"
    assert await chain.adapter.relayer_balance_wei() > 0
    # A restart against the same chain with the same relayer finds the same token.
    again = await EvmAdapter.local(evm_local(), chain.anvil.rpc_url, chain.relayer_secret)
    try:
        assert again.token("USDC") == usdc
    finally:
        await again.close()


async def test_addresses_and_wallets(chain: Chain) -> None:
    wallet = chain.adapter.generate_wallet()
    assert len(wallet.secret) == 32 and evm_tx.address_of(wallet.secret) == wallet.address
    assert chain.adapter.validate_address(wallet.address.lower()) == wallet.address
    with pytest.raises(evm_tx.InvalidAddress):
        chain.adapter.validate_address(evm_tx.ZERO_ADDRESS)


# ---------------------------------------------------------------------- approvals


async def test_eip3009_approval_moves_exactly_the_amount(chain: Chain) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    amount = 123_456_789
    issued = await chain.adapter.build_approval(
        approval_id="apr_eip3009",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=amount,
    )
    assert issued.public["format"] == "eip712" and issued.expires_at is not None
    signed = sign_typed(user, issued)
    args: dict[str, Any] = {
        "issued": issued,
        "user_wallet": user.address,
        "session_wallet": session.address,
        "token": chain.usdc,
        "amount_base_units": amount,
    }
    receipt = await chain.adapter.submit_approval(**args, signed=signed)
    assert receipt.amount_base_units == amount
    assert await chain.usdc_of(session.address) == amount
    assert await chain.usdc_of(user.address) == 1_000 * USDC - amount
    # The user and the session wallet never needed gas.
    assert await chain.eth_of(user.address) == 0
    assert await chain.eth_of(session.address) == 0
    # Submitting the same approval again (a retry after a crash) funds nothing twice.
    assert await chain.adapter.submit_approval(**args, signed=signed) == receipt
    fresh = await EvmAdapter.local(evm_local(), chain.anvil.rpc_url, chain.relayer_secret)
    try:
        assert (await fresh.submit_approval(**args, signed=signed)).tx_id == receipt.tx_id
    finally:
        await fresh.close()
    assert await chain.usdc_of(session.address) == amount


async def test_transaction_approval_moves_exactly_the_amount(chain: Chain) -> None:
    user = await funded_user(chain)
    await chain.give_eth(user.address)  # the fallback form: the user pays their own gas
    session = chain.adapter.generate_wallet()
    amount = 77 * USDC + 1
    issued = await chain.adapter.build_approval(
        approval_id="apr_tx",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=amount,
        method="transaction",
    )
    assert issued.public["format"] == "evm_transaction"
    unsigned = issued.public["unsigned_transaction"]
    assert unsigned["to"] == chain.usdc.address and unsigned["type"] == "0x2"
    signed = sign_unsigned(user.secret, issued)
    args: dict[str, Any] = {
        "issued": issued,
        "user_wallet": user.address,
        "session_wallet": session.address,
        "token": chain.usdc,
        "amount_base_units": amount,
    }
    receipt = await chain.adapter.submit_approval(**args, signed=signed)
    assert receipt.amount_base_units == amount
    assert await chain.usdc_of(session.address) == amount
    assert await chain.usdc_of(user.address) == 1_000 * USDC - amount
    assert await chain.adapter.submit_approval(**args, signed=signed) == receipt
    assert await chain.usdc_of(session.address) == amount


async def test_native_transaction_approval_moves_exactly_the_amount(chain: Chain) -> None:
    secret = evm_tx.new_private_key()
    user = evm_tx.address_of(secret)
    await chain.give_eth(user, 5 * 10**18)
    session = chain.adapter.generate_wallet()
    eth = chain.adapter.native_token()
    amount = 10**18 + 7
    issued = await chain.adapter.build_approval(
        approval_id="apr_native",
        user_wallet=user,
        session_wallet=session.address,
        token=eth,
        amount_base_units=amount,
    )
    assert issued.public["format"] == "evm_transaction"
    await chain.adapter.submit_approval(
        issued=issued,
        user_wallet=user,
        session_wallet=session.address,
        token=eth,
        amount_base_units=amount,
        signed=sign_unsigned(secret, issued),
    )
    assert await chain.adapter.balance(session.address, eth) == amount
    with pytest.raises(FlowNotSupported):
        await chain.adapter.build_approval(
            approval_id="apr_native2",
            user_wallet=user,
            session_wallet=session.address,
            token=eth,
            amount_base_units=1,
            method="eip3009",
        )


TAMPERED_TYPED_DATA = {
    "other value": ("message", "value", "999000000"),
    "other recipient": ("message", "to", "0x" + "66" * 20),
    "other chain id": ("domain", "chainId", 1),
    "other token contract": ("domain", "verifyingContract", "0x" + "77" * 20),
}


@pytest.mark.parametrize("case", list(TAMPERED_TYPED_DATA))
async def test_tampered_eip712_approval_is_refused_and_nothing_moves(
    chain: Chain, case: str
) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id=f"apr_tamper_{case}",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
    )
    section, field, value = TAMPERED_TYPED_DATA[case]
    typed = issued.public["typed_data"]
    tampered = {**typed, section: {**typed[section], field: value}}
    signature = Account.sign_typed_data(user.secret, full_message=tampered).signature
    args: dict[str, Any] = {
        "issued": issued,
        "user_wallet": user.address,
        "session_wallet": session.address,
        "token": chain.usdc,
        "amount_base_units": 10 * USDC,
    }
    with pytest.raises(ApprovalMismatch):
        await chain.adapter.submit_approval(
            **args, signed={"signature": "0x" + bytes(signature).hex(), "typed_data": tampered}
        )
    with pytest.raises(ApprovalSignatureInvalid):  # same signature, typed data withheld
        await chain.adapter.submit_approval(
            **args, signed={"signature": "0x" + bytes(signature).hex()}
        )
    assert await chain.usdc_of(user.address) == 1_000 * USDC
    assert await chain.usdc_of(session.address) == 0


async def test_eip712_approval_signed_by_someone_else_is_refused(chain: Chain) -> None:
    user = await funded_user(chain)
    intruder = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_other_signer",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
    )
    with pytest.raises(ApprovalSignatureInvalid):
        await chain.adapter.submit_approval(
            issued=issued,
            user_wallet=user.address,
            session_wallet=session.address,
            token=chain.usdc,
            amount_base_units=10 * USDC,
            signed=sign_typed(intruder, issued),
        )
    # The call must also describe the issued approval: other amount, other wallet.
    signed = sign_typed(user, issued)
    for changes in (
        {"amount_base_units": 11 * USDC},
        {"user_wallet": intruder.address},
        {"session_wallet": intruder.address},
    ):
        args: dict[str, Any] = {
            "issued": issued,
            "user_wallet": user.address,
            "session_wallet": session.address,
            "token": chain.usdc,
            "amount_base_units": 10 * USDC,
            **changes,
        }
        with pytest.raises(ApprovalMismatch):
            await chain.adapter.submit_approval(**args, signed=signed)
    # A forged private record (another token contract) is refused too.
    forged = IssuedApproval(
        public=issued.public,
        private={**issued.private, "token": "0x" + "77" * 20},
        expires_at=issued.expires_at,
    )
    with pytest.raises(ApprovalMismatch):
        await chain.adapter.submit_approval(
            issued=forged,
            user_wallet=user.address,
            session_wallet=session.address,
            token=chain.usdc,
            amount_base_units=10 * USDC,
            signed=signed,
        )
    assert await chain.usdc_of(session.address) == 0
    assert await chain.usdc_of(user.address) == 1_000 * USDC


async def test_eip712_approval_past_valid_before_is_expired() -> None:
    async with local_chain() as bent:
        user = await funded_user(bent)
        session = bent.adapter.generate_wallet()
        issued = await bent.adapter.build_approval(
            approval_id="apr_expired",
            user_wallet=user.address,
            session_wallet=session.address,
            token=bent.usdc,
            amount_base_units=10 * USDC,
        )
        signed = sign_typed(user, issued)
        await bent.rpc("evm_increaseTime", 2 * 3600)
        await bent.rpc("evm_mine")
        with pytest.raises(ApprovalExpired):
            await bent.adapter.submit_approval(
                issued=issued,
                user_wallet=user.address,
                session_wallet=session.address,
                token=bent.usdc,
                amount_base_units=10 * USDC,
                signed=signed,
            )
        assert await bent.usdc_of(session.address) == 0
        # After the warp a fresh approval is valid again (validBefore follows chain time).
        fresh = await bent.adapter.build_approval(
            approval_id="apr_expired",
            user_wallet=user.address,
            session_wallet=session.address,
            token=bent.usdc,
            amount_base_units=10 * USDC,
        )
        args: dict[str, Any] = {
            "issued": fresh,
            "user_wallet": user.address,
            "session_wallet": session.address,
            "token": bent.usdc,
            "amount_base_units": 10 * USDC,
            "signed": sign_typed(user, fresh),
        }
        receipt = await bent.adapter.submit_approval(**args)
        assert await bent.usdc_of(session.address) == 10 * USDC
        # A settled approval retried after its validBefore is still the same success.
        await bent.rpc("evm_increaseTime", 2 * 3600)
        await bent.rpc("evm_mine")
        assert await bent.adapter.submit_approval(**args) == receipt
        assert await bent.usdc_of(session.address) == 10 * USDC


async def test_reused_eip3009_nonce_is_refused_and_nothing_moves(chain: Chain) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    first = await chain.adapter.build_approval(
        approval_id="apr_nonce_a",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
    )
    await chain.adapter.submit_approval(
        issued=first,
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
        signed=sign_typed(user, first),
    )
    second = await chain.adapter.build_approval(
        approval_id="apr_nonce_b",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=10 * USDC,
    )
    args: dict[str, Any] = {
        "issued": second,
        "user_wallet": user.address,
        "session_wallet": session.address,
        "token": chain.usdc,
        "amount_base_units": 10 * USDC,
    }
    # (a) the user signs the second approval with the first one's (used) nonce;
    typed = second.public["typed_data"]
    reused = {
        **typed,
        "message": {**typed["message"], "nonce": first.public["typed_data"]["message"]["nonce"]},
    }
    sig = Account.sign_typed_data(user.secret, full_message=reused).signature
    with pytest.raises(ApprovalMismatch):
        await chain.adapter.submit_approval(
            **args, signed={"signature": "0x" + bytes(sig).hex(), "typed_data": reused}
        )
    # (b) the first approval's signature replayed for the second;
    with pytest.raises((ApprovalMismatch, ApprovalSignatureInvalid)):
        await chain.adapter.submit_approval(**args, signed=sign_typed(user, first))
    # (c) the second approval's nonce got used on chain by another transfer first
    #     (the user signed something else with it): refused, the session gets nothing.
    other = evm_tx.Authorization.from_json(typed["message"])
    other = replace(other, to=evm_tx.checksum("0x" + "99" * 20), value=1)
    domain = evm_tx.TokenDomain("Zpay Test USD", "2", 31337, chain.usdc.address)
    elsewhere = evm_tx.sign_authorization(user.secret, domain, other)
    data = evm_tx.encode_transfer_with_authorization(elsewhere)
    assert await chain.relayer_tx_behind_the_adapters_back(chain.usdc.address, data, 200_000) == 1
    with pytest.raises(ApprovalRejected):
        await chain.adapter.submit_approval(**args, signed=sign_typed(user, second))
    assert await chain.usdc_of(session.address) == 10 * USDC
    assert await chain.usdc_of(user.address) == 1_000 * USDC - 10 * USDC - 1


TAMPERED_TRANSACTION: dict[str, dict[str, Any]] = {
    "other value": {"data": evm_tx.encode_erc20_transfer("0x" + "00" * 19 + "01", 0)},
    "other recipient": {},  # filled in the test (needs the session address)
    "other chain id": {"chainId": 1},
    "other token contract": {"to": "0x" + "77" * 20},
    "native value added": {"value": 1},
    "other nonce": {"nonce": 99},
}


@pytest.mark.parametrize("case", [*TAMPERED_TRANSACTION, "other signer", "legacy type"])
async def test_tampered_transaction_approval_is_refused_and_nothing_moves(
    chain: Chain, case: str
) -> None:
    user = await funded_user(chain)
    await chain.give_eth(user.address)
    session = chain.adapter.generate_wallet()
    amount = 10 * USDC
    issued = await chain.adapter.build_approval(
        approval_id=f"apr_tx_tamper_{case}",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=amount,
        method="transaction",
    )
    args: dict[str, Any] = {
        "issued": issued,
        "user_wallet": user.address,
        "session_wallet": session.address,
        "token": chain.usdc,
        "amount_base_units": amount,
    }
    if case == "other signer":
        intruder = evm_tx.new_private_key()
        await chain.give_eth(evm_tx.address_of(intruder))
        signed = sign_unsigned(intruder, issued)
        expected: type[Exception] = ApprovalSignatureInvalid
    elif case == "legacy type":
        tx = evm_tx.UnsignedTransaction.from_json(issued.public["unsigned_transaction"])
        legacy = {
            "chainId": tx.chain_id,
            "nonce": tx.nonce,
            "to": tx.to,
            "value": 0,
            "data": tx.data,
            "gas": tx.gas,
            "gasPrice": tx.max_fee_per_gas,
        }
        raw = Account.sign_transaction(legacy, user.secret).raw_transaction
        signed = {"signed_transaction": "0x" + bytes(raw).hex()}
        expected = ApprovalMismatch
    else:
        changes = dict(TAMPERED_TRANSACTION[case])
        if case == "other value":
            changes = {"data": evm_tx.encode_erc20_transfer(session.address, amount * 10)}
        if case == "other recipient":
            changes = {"data": evm_tx.encode_erc20_transfer("0x" + "66" * 20, amount)}
        signed = sign_unsigned(user.secret, issued, **changes)
        expected = ApprovalMismatch
    nonce_before = await chain.account_nonce(user.address)
    with pytest.raises(expected):
        await chain.adapter.submit_approval(**args, signed=signed)
    assert await chain.account_nonce(user.address) == nonce_before
    assert await chain.usdc_of(session.address) == 0
    assert await chain.usdc_of(user.address) == 1_000 * USDC


async def test_transaction_approval_without_funds_is_rejected(chain: Chain) -> None:
    user = await funded_user(chain, usdc=5 * USDC)
    await chain.give_eth(user.address)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_poor",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=6 * USDC,
        method="transaction",
    )
    with pytest.raises(ApprovalRejected):
        await chain.adapter.submit_approval(
            issued=issued,
            user_wallet=user.address,
            session_wallet=session.address,
            token=chain.usdc,
            amount_base_units=6 * USDC,
            signed=sign_unsigned(user.secret, issued),
        )
    assert await chain.usdc_of(user.address) == 5 * USDC


# ----------------------------------------------------------------------- payments


async def test_32_concurrent_payments_use_distinct_relayer_nonces(chain: Chain) -> None:
    session = chain.adapter.generate_wallet()
    funded = 10_000 * USDC
    await chain.adapter.faucet(session.address, chain.usdc, funded)
    merchants = [chain.adapter.generate_wallet().address for _ in range(4)]
    amounts = [(i + 1) * USDC + i for i in range(32)]
    prepared = await asyncio.gather(
        *(
            chain.adapter.prepare_transfer(
                secret=session.secret,
                source=session.address,
                destination=merchants[i % 4],
                token=chain.usdc,
                amount_base_units=amounts[i],
                reference_seed=f"pay_conc_{i}",
            )
            for i in range(32)
        )
    )
    assert len({p.reference for p in prepared}) == 32
    await asyncio.gather(*(chain.adapter.submit_transfer(p) for p in prepared))
    statuses = await asyncio.gather(
        *(chain.adapter.wait_for_transfer(p.reference, timeout_s=TIMEOUT_S) for p in prepared)
    )
    assert all(s.state is TransferState.CONFIRMED for s in statuses), statuses
    tx_ids = [s.tx_id for s in statuses]
    assert None not in tx_ids and len(set(tx_ids)) == 32
    nonces = sorted([await chain.relayer_nonce_of(t) for t in tx_ids if t])
    assert nonces == list(range(nonces[0], nonces[0] + 32))  # distinct, no gap
    assert await chain.usdc_of(session.address) == funded - sum(amounts)
    for m, merchant in enumerate(merchants):
        assert await chain.usdc_of(merchant) == sum(amounts[m::4])


async def test_a_wait_reads_the_status_once_per_block_not_once_per_poll() -> None:
    """While no block comes, a wait polls the head (one cheap call, shared by every
    waiter of the adapter) and reads the transfer's status only when heal is due; a new
    block ends it at once."""
    async with local_chain() as bent:  # polls every 50 ms, heals every 0.5 s
        session = bent.adapter.generate_wallet()
        await bent.adapter.faucet(session.address, bent.usdc, 10 * USDC)
        prepared = await pay(bent.adapter, session.secret, session.address,
                             bent.adapter.generate_wallet().address, bent.usdc, 3 * USDC,
                             "pay_per_block")
        await bent.rpc("evm_setAutomine", False)
        await bent.adapter.submit_transfer(prepared)
        calls: Counter[str] = Counter()

        async def count(method: str) -> None:
            calls[method] += 1

        bent.adapter.node.observe(count)
        assert (await bent.adapter.transfer_status(prepared.reference)).state is (
            TransferState.PENDING
        )
        per_read = calls["eth_call"]
        calls.clear()
        waits = await asyncio.gather(
            *(bent.adapter.wait_for_transfer(prepared.reference, timeout_s=1.2) for _ in range(4))
        )
        assert [w.state for w in waits] == [TransferState.PENDING] * 4
        # Polling the status itself every 50 ms would be ~24 reads per waiter. Now at most
        # 5: at the start, at the watch's first head, when heal is due (0.5 s, 1.0 s), and
        # at the deadline.
        assert calls["eth_call"] <= 4 * 5 * per_read, calls
        assert calls["eth_blockNumber"] >= 5, calls  # the head, watched meanwhile
        waiting = asyncio.create_task(
            bent.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
        )
        await asyncio.sleep(0.2)
        await bent.rpc("evm_mine")
        assert (await waiting).state is TransferState.CONFIRMED
        bent.adapter.node.observe(None)
        # Closing stops the watch, even while a wait (for a transfer never sent) goes on.
        lingering = asyncio.create_task(
            bent.adapter.wait_for_transfer(f"{session.address}:0x{'33' * 32}:2000000000",
                                           timeout_s=TIMEOUT_S)
        )
        await asyncio.sleep(0.2)
        watch = bent.adapter._heads._task
        assert watch is not None and not watch.done()
        await bent.adapter._heads.close()
        assert watch.done()
        lingering.cancel()


async def test_a_resubmitted_payment_settles_once(chain: Chain) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 100 * USDC)
    merchant = chain.adapter.generate_wallet().address
    pay: dict[str, Any] = {
        "secret": session.secret,
        "source": session.address,
        "destination": merchant,
        "token": chain.usdc,
        "amount_base_units": 30 * USDC,
        "reference_seed": "pay_once",
    }
    prepared = await chain.adapter.prepare_transfer(**pay)
    assert (await chain.adapter.transfer_status(prepared.reference)).state is TransferState.UNKNOWN
    await asyncio.gather(*(chain.adapter.submit_transfer(prepared) for _ in range(3)))
    status = await chain.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
    assert status.state is TransferState.CONFIRMED
    await chain.adapter.submit_transfer(prepared)
    # After a "crash": a new process knows nothing but the chain. Re-submitting the
    # stored transfer, or re-preparing the same payment, settles nothing more.
    fresh = await EvmAdapter.local(evm_local(), chain.anvil.rpc_url, chain.relayer_secret)
    try:
        recovered = await fresh.transfer_status(prepared.reference)
        assert recovered.state is TransferState.CONFIRMED and recovered.tx_id == status.tx_id
        await fresh.submit_transfer(prepared)
        again = await fresh.prepare_transfer(**pay)
        await fresh.submit_transfer(again)
        assert (await fresh.transfer_status(again.reference)).state is TransferState.CONFIRMED
    finally:
        await fresh.close()
    # Even a relayer tx forced past every check cannot spend the authorization twice.
    signed = evm_tx.SignedAuthorization.from_payload(prepared.payload)
    data = evm_tx.encode_transfer_with_authorization(signed)
    assert await chain.relayer_tx_behind_the_adapters_back(chain.usdc.address, data, 200_000) == 0
    assert await chain.usdc_of(merchant) == 30 * USDC
    assert await chain.usdc_of(session.address) == 70 * USDC


async def test_payment_without_funds_fails_before_sending(chain: Chain) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 5 * USDC)
    prepared = await chain.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=chain.adapter.generate_wallet().address,
        token=chain.usdc,
        amount_base_units=6 * USDC,
        reference_seed="pay_poor",
    )
    with pytest.raises(TransferFailed):
        await chain.adapter.submit_transfer(prepared)
    assert (await chain.adapter.transfer_status(prepared.reference)).state is TransferState.UNKNOWN
    assert await chain.usdc_of(session.address) == 5 * USDC


async def test_an_expired_unsubmitted_payment_is_failed_for_certain() -> None:
    async with local_chain() as bent:
        session = bent.adapter.generate_wallet()
        await bent.adapter.faucet(session.address, bent.usdc, 5 * USDC)
        prepared = await bent.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=bent.adapter.generate_wallet().address,
            token=bent.usdc,
            amount_base_units=USDC,
            reference_seed="pay_late",
        )
        await bent.rpc("evm_increaseTime", 3600)
        await bent.rpc("evm_mine")
        status = await bent.adapter.transfer_status(prepared.reference)
        assert status.state is TransferState.FAILED
        with pytest.raises(TransferFailed):
            await bent.adapter.submit_transfer(prepared)
        assert await bent.usdc_of(session.address) == 5 * USDC


async def test_relayer_recovers_after_a_dropped_transaction() -> None:
    async with local_chain() as bent:
        session = bent.adapter.generate_wallet()
        await bent.adapter.faucet(session.address, bent.usdc, 100 * USDC)
        merchant = bent.adapter.generate_wallet().address
        first, second = [
            await bent.adapter.prepare_transfer(
                secret=session.secret,
                source=session.address,
                destination=merchant,
                token=bent.usdc,
                amount_base_units=amount,
                reference_seed=seed,
            )
            for seed, amount in (("pay_drop_1", 10 * USDC), ("pay_drop_2", 20 * USDC))
        ]
        await bent.rpc("evm_setAutomine", False)
        await bent.adapter.submit_transfer(first)
        pending = await bent.adapter.transfer_status(first.reference)
        assert pending.state is TransferState.PENDING and pending.tx_id
        await bent.rpc("anvil_dropTransaction", pending.tx_id)
        await bent.rpc("evm_setAutomine", True)
        # The second payment takes the next nonce and is stuck behind the gap ...
        await bent.adapter.submit_transfer(second)
        # ... until the adapter notices the drop and re-broadcasts the first.
        done = await asyncio.gather(
            bent.adapter.wait_for_transfer(second.reference, timeout_s=TIMEOUT_S),
            bent.adapter.wait_for_transfer(first.reference, timeout_s=TIMEOUT_S),
        )
        assert [s.state for s in done] == [TransferState.CONFIRMED] * 2, done
        nonces = sorted([await bent.relayer_nonce_of(s.tx_id) for s in done if s.tx_id])
        assert nonces[1] == nonces[0] + 1
        assert await bent.usdc_of(merchant) == 30 * USDC
        assert await bent.usdc_of(session.address) == 70 * USDC


async def test_a_relayer_tx_stuck_below_the_base_fee_is_replaced() -> None:
    options = EvmOptions(
        confirm_timeout_s=TIMEOUT_S,
        poll_interval_s=0.05,
        heal_interval_s=0.2,
        stuck_after_s=0.5,
        expiry_margin_s=2,
    )
    async with local_chain(options) as bent:
        session = bent.adapter.generate_wallet()
        await bent.adapter.faucet(session.address, bent.usdc, 10 * USDC)
        merchant = bent.adapter.generate_wallet().address
        prepared = await bent.adapter.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=merchant,
            token=bent.usdc,
            amount_base_units=3 * USDC,
            reference_seed="pay_stuck",
        )
        relayer = bent.adapter.relayer_address
        expected_nonce = await bent.account_nonce(relayer, "pending")
        await bent.rpc("evm_setAutomine", False)
        await bent.adapter.submit_transfer(prepared)
        first = await bent.adapter.transfer_status(prepared.reference)
        # Fees jump far above the transaction's cap: it cannot be mined as it is.
        await bent.rpc("anvil_setNextBlockBaseFeePerGas", hex(10**12))
        await bent.rpc("evm_mine")
        # anvil evicts it (the node lost it: UNKNOWN, re-sending is safe); a node that
        # keeps it says PENDING. Never FAILED: it is still valid.
        assert (await bent.adapter.transfer_status(prepared.reference)).state in (
            TransferState.PENDING,
            TransferState.UNKNOWN,
        )

        async def miner() -> None:
            while True:
                await bent.rpc("evm_mine")
                await asyncio.sleep(0.1)

        mining = asyncio.create_task(miner())
        try:
            done = await bent.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
        finally:
            mining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mining
        assert done.state is TransferState.CONFIRMED and done.tx_id != first.tx_id
        # The same nonce, carrying the same call: no gap, no filler, paid once.
        assert await bent.relayer_nonce_of(done.tx_id or "") == expected_nonce
        assert await bent.account_nonce(relayer) == expected_nonce + 1
        assert await bent.usdc_of(merchant) == 3 * USDC


async def test_relayer_resyncs_its_nonce_after_outside_use(chain: Chain) -> None:
    session = chain.adapter.generate_wallet()
    await chain.adapter.faucet(session.address, chain.usdc, 10 * USDC)
    # Someone else spends relayer nonces behind the adapter's back (another process,
    # an operator with the same key).
    for _ in range(2):
        relayer = chain.adapter.relayer_address
        assert await chain.relayer_tx_behind_the_adapters_back(relayer, b"", 21_000) == 1
    prepared = await chain.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=chain.adapter.generate_wallet().address,
        token=chain.usdc,
        amount_base_units=4 * USDC,
        reference_seed="pay_resync",
    )
    await chain.adapter.submit_transfer(prepared)
    status = await chain.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
    assert status.state is TransferState.CONFIRMED
    assert await chain.usdc_of(session.address) == 6 * USDC


# -------------------------------------------------------------------------- sweep


async def test_sweep_returns_exactly_the_remainder(chain: Chain) -> None:
    user = await funded_user(chain)
    session = chain.adapter.generate_wallet()
    issued = await chain.adapter.build_approval(
        approval_id="apr_sweep",
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=100 * USDC,
    )
    await chain.adapter.submit_approval(
        issued=issued,
        user_wallet=user.address,
        session_wallet=session.address,
        token=chain.usdc,
        amount_base_units=100 * USDC,
        signed=sign_typed(user, issued),
    )
    merchant = chain.adapter.generate_wallet().address
    prepared = await chain.adapter.prepare_transfer(
        secret=session.secret,
        source=session.address,
        destination=merchant,
        token=chain.usdc,
        amount_base_units=29_990_000,
        reference_seed="pay_before_sweep",
    )
    await chain.adapter.submit_transfer(prepared)
    await chain.adapter.wait_for_transfer(prepared.reference, timeout_s=TIMEOUT_S)
    receipt = await chain.adapter.sweep(
        secret=session.secret,
        source=session.address,
        destination=user.address,
        token=chain.usdc,
    )
    assert receipt is not None and receipt.amount_base_units == 100 * USDC - 29_990_000
    assert await chain.usdc_of(session.address) == 0
    assert await chain.usdc_of(user.address) == 1_000 * USDC - 29_990_000
    assert (
        await chain.adapter.sweep(
            secret=session.secret,
            source=session.address,
            destination=user.address,
            token=chain.usdc,
        )
        is None
    )


# -------------------------------------------------------------- errors & flows


async def test_public_networks_have_no_faucet_and_a_dead_node_is_unavailable() -> None:
    spec = get_network("base-sepolia", environ={})
    adapter = EvmAdapter.rpc(spec, evm_tx.new_private_key(), rpc_url="http://127.0.0.1:9")
    try:
        usdc = adapter.token("USDC")
        assert usdc.address == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        with pytest.raises(FlowNotSupported):
            await adapter.faucet(evm_tx.address_of(evm_tx.new_private_key()), usdc, 1)
        with pytest.raises(ChainUnavailable):
            await adapter.balance("0x" + "11" * 20, usdc)
    finally:
        await adapter.close()


async def test_an_unfunded_relayer_is_reported_as_such(chain: Chain) -> None:
    poor = await EvmAdapter.local(evm_local(), chain.anvil.rpc_url, chain.relayer_secret)
    try:
        session = chain.adapter.generate_wallet()
        await chain.adapter.faucet(session.address, chain.usdc, 5 * USDC)
        prepared = await poor.prepare_transfer(
            secret=session.secret,
            source=session.address,
            destination=chain.adapter.generate_wallet().address,
            token=chain.usdc,
            amount_base_units=USDC,
            reference_seed="pay_unfunded",
        )
        balance = await chain.eth_of(chain.adapter.relayer_address)
        await chain.give_eth(chain.adapter.relayer_address, 0)
        try:
            with pytest.raises(ChainUnavailable) as info:
                await poor.submit_transfer(prepared)
            assert info.value.code == "relayer_unfunded"
        finally:
            await chain.give_eth(chain.adapter.relayer_address, balance)
        assert await chain.usdc_of(session.address) == 5 * USDC
    finally:
        await poor.close()


async def test_tokens_are_the_adapters_own(chain: Chain) -> None:
    fake = replace(chain.usdc, address=evm_tx.checksum("0x" + "77" * 20))
    with pytest.raises(evm_tx.ChainError) as info:
        await chain.adapter.balance("0x" + "11" * 20, fake)
    assert info.value.code == "unknown_token"
    with pytest.raises(evm_tx.ChainError):
        chain.adapter.token("DOGE")


@pytest.fixture
def no_anvil_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ZPAY_ANVIL_BIN", "/nonexistent/anvil")
    yield


async def test_embedded_network_fails_loudly_without_anvil(no_anvil_env: None) -> None:
    with pytest.raises(AnvilNotFound):
        await EvmAdapter.embedded(evm_local(), evm_tx.new_private_key())


async def test_open_embedded_keeps_its_key_and_token(tmp_path: Path) -> None:
    first = await EvmAdapter.open(evm_local(), None, state_dir=tmp_path)
    try:
        token = first.token("USDC")
        relayer = first.relayer_address
        assert (tmp_path / "relayer.key").stat().st_mode & 0o777 == 0o600
    finally:
        await first.close()
    second = await EvmAdapter.open(evm_local(), None, state_dir=tmp_path)
    try:
        assert second.relayer_address == relayer and second.token("USDC") == token
    finally:
        await second.close()
