"""Funding approvals on EVM: what the user is asked to sign, and the check of what came back.

Two forms (DESIGN.md "Approvals the user signs"): EIP-3009 typed data the relayer submits
(the user needs no gas), or — for a token without EIP-3009 — an unsigned EIP-1559
transaction the user signs and zpay broadcasts. Building asks the node for chain time,
fees and the user's nonce; checking is pure (`evm_tx` does the cryptography): a signed
approval passes only if it is field for field what was issued, signed by the user.

Renewals of one funding are built with the same `approval_id`, hence the same EIP-3009
nonce: at most one version can ever fund, and the token itself enforces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from zpay.chains import evm_refs, evm_status, evm_tx
from zpay.chains.evm_node import BroadcastRefused, EvmNode, NodeError, with_headroom
from zpay.chains.evm_tokens import TokenBook, supports_eip3009
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRejected,
    ChainAdapter,
    ChainError,
    ChainReceipt,
    ConfirmationTimeout,
    FlowNotSupported,
    IssuedApproval,
    PreparedTransfer,
    TokenInfo,
    TransferFailed,
    TransferState,
    TransferStatus,
)

METHOD_EIP3009 = "eip3009"
METHOD_TRANSACTION = "transaction"
FORMAT_EIP712 = "eip712"
FORMAT_EVM_TRANSACTION = "evm_transaction"


async def build(
    node: EvmNode,
    book: TokenBook,
    *,
    network: str,
    chain_id: int,
    approval_id: str,
    user: str,
    session: str,
    token: TokenInfo,
    amount_base_units: int,
    method: str | None,
    approval_ttl_s: int,
    gas_headroom_percent: int,
) -> IssuedApproval:
    """Renewals of one funding pass the same `approval_id`: they share the EIP-3009
    nonce, so at most one version can ever fund."""
    evm_tx.require_amount(amount_base_units)
    if evm_tx.same_address(user, session):
        raise ApprovalMismatch("the session wallet must differ from the user wallet")
    chosen = method or (METHOD_EIP3009 if supports_eip3009(token) else METHOD_TRANSACTION)
    if chosen not in (METHOD_EIP3009, METHOD_TRANSACTION):
        raise FlowNotSupported(
            f"approval method {method!r} is not supported on EVM "
            f"(use {METHOD_EIP3009!r} or {METHOD_TRANSACTION!r})"
        )
    if chosen == METHOD_EIP3009 and not supports_eip3009(token):
        raise FlowNotSupported(f"{token.symbol} on {network} has no EIP-3009")
    common = {
        "network": network,
        "chain_id": chain_id,
        "token": token.address,
        "token_symbol": token.symbol,
        "user_wallet": user,
        "session_wallet": session,
        "amount": str(amount_base_units),
        "issued_block": await node.block_number(),
    }
    if chosen == METHOD_TRANSACTION:
        return await build_transaction(
            node,
            common=common,
            chain_id=chain_id,
            token=token,
            user=user,
            session=session,
            amount_base_units=amount_base_units,
            gas_headroom_percent=gas_headroom_percent,
        )
    return build_eip3009(
        common=common,
        domain=book.domain(token),
        approval_id=approval_id,
        user=user,
        session=session,
        amount_base_units=amount_base_units,
        valid_before=await node.chain_now_s() + approval_ttl_s,
    )


def build_eip3009(
    *,
    common: Mapping[str, Any],
    domain: evm_tx.TokenDomain,
    approval_id: str,
    user: str,
    session: str,
    amount_base_units: int,
    valid_before: int,
) -> IssuedApproval:
    auth = evm_tx.Authorization(
        from_address=user,
        to=session,
        value=amount_base_units,
        valid_after=0,
        valid_before=valid_before,
        nonce=evm_tx.approval_nonce(approval_id),
    )
    typed = evm_tx.typed_data(domain, auth)
    return IssuedApproval(
        public={
            "format": FORMAT_EIP712,
            "method": METHOD_EIP3009,
            "chain_id": domain.chain_id,
            "typed_data": typed,
        },
        private={
            **common,
            "format": FORMAT_EIP712,
            "domain": typed["domain"],
            "authorization": auth.to_json(),
        },
        expires_at=datetime.fromtimestamp(valid_before, UTC),
    )


async def build_transaction(
    node: EvmNode,
    *,
    common: Mapping[str, Any],
    chain_id: int,
    token: TokenInfo,
    user: str,
    session: str,
    amount_base_units: int,
    gas_headroom_percent: int,
) -> IssuedApproval:
    user_nonce = await node.nonce(user, "pending")
    max_fee, priority_fee = await node.fees()
    unsigned = evm_tx.build_funding_transaction(
        chain_id=chain_id,
        token_address=token.address,
        user_wallet=user,
        session_wallet=session,
        amount_base_units=amount_base_units,
        nonce=user_nonce,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority_fee,
    )
    try:
        estimated = await node.estimate_gas(
            sender=unsigned.sender, to=unsigned.to, data=unsigned.data, value=unsigned.value
        )
        unsigned = replace(unsigned, gas=with_headroom(estimated, gas_headroom_percent))
    except ChainError:
        # The user may not hold the funds yet when the approval is issued; the builder's
        # default limit covers a plain transfer.
        pass
    return IssuedApproval(
        public={
            "format": FORMAT_EVM_TRANSACTION,
            "method": METHOD_TRANSACTION,
            "chain_id": chain_id,
            "unsigned_transaction": unsigned.to_json(),
        },
        private={
            **common,
            "format": FORMAT_EVM_TRANSACTION,
            "unsigned_transaction": unsigned.to_json(),
        },
        # Valid until the user's account nonce moves past it (not a time).
        expires_at=None,
    )


# ------------------------------------------------------------------------- checks


def check_call(
    private: Mapping[str, Any],
    *,
    network: str,
    chain_id: int,
    token: TokenInfo,
    user: str,
    session: str,
    amount_base_units: int,
    signed: Any,
) -> None:
    """The call must describe the approval that was issued: a mix-up between two
    approvals is refused before anything is looked at on chain."""
    if private.get("network") != network or private.get("chain_id") != chain_id:
        raise ApprovalMismatch("the approval was issued for another chain")
    if not evm_tx.same_address(str(private.get("token", "")), token.address):
        raise ApprovalMismatch("the approval was issued for another token contract")
    if not evm_tx.same_address(str(private.get("user_wallet", "")), user):
        raise ApprovalMismatch("the approval was issued for another user wallet")
    if not evm_tx.same_address(str(private.get("session_wallet", "")), session):
        raise ApprovalMismatch("the approval was issued for another session wallet")
    if private.get("amount") != str(amount_base_units):
        raise ApprovalMismatch("the approval was issued for another amount")
    if not isinstance(signed, Mapping):
        raise ApprovalMismatch("signed must be an object")
    if private.get("format") not in (FORMAT_EIP712, FORMAT_EVM_TRANSACTION):
        raise ApprovalMismatch("unknown approval format")


def checked_authorization(
    private: Mapping[str, Any],
    *,
    domain: evm_tx.TokenDomain,
    user: str,
    session: str,
    signed: Mapping[str, Any],
) -> evm_tx.SignedAuthorization:
    if private.get("domain") != domain.as_typed_data():
        raise ApprovalMismatch("the approval's EIP-712 domain is not this token's")
    auth = evm_tx.Authorization.from_json(private.get("authorization") or {})
    if (
        not evm_tx.same_address(auth.from_address, user)
        or not evm_tx.same_address(auth.to, session)
        or str(auth.value) != private.get("amount")
    ):
        raise ApprovalMismatch("the issued authorization does not match the approval")
    claimed = signed.get("typed_data")
    if claimed is not None and not isinstance(claimed, Mapping):
        raise ApprovalMismatch("typed_data must be an object")
    return evm_tx.check_signed_authorization(
        domain=domain,
        issued=auth,
        user_wallet=user,
        signature=signed.get("signature"),
        claimed_typed_data=claimed,
        now_s=None,  # expiry is the chain's to judge: a landed approval stays landed
    )


def checked_transaction(
    private: Mapping[str, Any],
    *,
    chain_id: int,
    token: TokenInfo,
    user: str,
    session: str,
    signed: Mapping[str, Any],
) -> evm_tx.CheckedTransaction:
    issued_tx = evm_tx.UnsignedTransaction.from_json(private.get("unsigned_transaction") or {})
    # What zpay issued must still be the transfer this approval stands for.
    expected = evm_tx.build_funding_transaction(
        chain_id=chain_id,
        token_address=token.address,
        user_wallet=user,
        session_wallet=session,
        amount_base_units=int(str(private.get("amount"))),
        nonce=issued_tx.nonce,
        max_fee_per_gas=issued_tx.max_fee_per_gas,
        max_priority_fee_per_gas=issued_tx.max_priority_fee_per_gas,
        gas=issued_tx.gas,
    )
    if expected != issued_tx:
        raise ApprovalMismatch("the issued transaction does not match the approval")
    return evm_tx.check_signed_funding_transaction(
        signed_transaction=signed.get("signed_transaction"),
        issued=issued_tx,
        user_wallet=user,
    )


def prepared_approval(
    private: Mapping[str, Any],
    *,
    network: str,
    chain_id: int,
    book: TokenBook,
    token: TokenInfo,
    user: str,
    session: str,
    amount_base_units: int,
    signed: Any,
) -> PreparedTransfer:
    """The signed approval as a transfer ready to send, if it is exactly what was issued
    (ApprovalMismatch / ApprovalSignatureInvalid otherwise). Pure: whether it already
    landed or lapsed is the chain's to say."""
    check_call(
        private,
        network=network,
        chain_id=chain_id,
        token=token,
        user=user,
        session=session,
        amount_base_units=amount_base_units,
        signed=signed,
    )
    if private.get("format") == FORMAT_EIP712:
        checked = checked_authorization(
            private, domain=book.domain(token), user=user, session=session, signed=signed
        )
        reference = evm_refs.approval_reference(checked.authorization)
        return evm_refs.prepared_authorization(chain_id, token.address, checked, reference)
    tx = checked_transaction(
        private, chain_id=chain_id, token=token, user=user, session=session, signed=signed
    )
    return PreparedTransfer(
        reference=evm_refs.transaction_reference(tx.tx_hash, user, tx.nonce),
        payload=tx.raw,
        extra={"format": FORMAT_EVM_TRANSACTION, "from": user, "nonce": tx.nonce},
    )


async def send_user_transaction(node: EvmNode, tx: evm_tx.DecodedTransaction) -> None:
    """Broadcast the user's signed funding transaction, unless the node has it or its
    nonce is used. TransferFailed (nothing sent) if it would fail or the node refuses."""
    if await node.tx_known(tx.tx_hash):
        return
    if await node.nonce(tx.sender, "latest") > tx.nonce:
        return  # mined, or its nonce used by another: transfer_status tells which
    try:
        await node.call(tx.to or "", tx.data, sender=tx.sender, value=tx.value)
    except ChainError as exc:
        if exc.code != "reverted" and not isinstance(exc, NodeError):
            raise
        raise TransferFailed(f"the transfer would fail, nothing was sent: {exc}") from exc
    try:
        await node.broadcast(tx.raw)
    except BroadcastRefused as exc:
        raise TransferFailed(f"the node refused the transaction: {exc.reason}") from exc
    # SENT or KNOWN: on its way. NONCE_USED / UNDERPRICED: another transaction of the
    # user's holds that nonce; the status says which one lands.


# ----------------------------------------------------------------- the convenience


async def submit_and_wait(
    adapter: ChainAdapter, prepared: PreparedTransfer, amount_base_units: int, *, timeout_s: float
) -> ChainReceipt:
    """`submit_approval`: send a prepared approval and wait for the chain's answer, with
    the approval errors the protocol promises (nothing moved when one is raised)."""
    try:
        await adapter.submit_transfer(prepared)
    except TransferFailed as exc:
        status = await adapter.transfer_status(prepared.reference)
        if status.state is TransferState.UNKNOWN:
            if exc.code == "expires_too_soon":
                raise ApprovalExpired("the approval expires before it could land") from exc
            raise ApprovalRejected(f"the approval cannot land, nothing moved: {exc}") from exc
    status = await adapter.wait_for_transfer(
        prepared.reference,
        timeout_s=timeout_s,
        valid_until=prepared.valid_until,
    )
    if status.state is TransferState.CONFIRMED:
        return ChainReceipt(tx_id=status.tx_id or "", amount_base_units=amount_base_units)
    if status.state is TransferState.FAILED:
        raise approval_failure(status)
    raise ConfirmationTimeout(f"approval {prepared.reference} not confirmed yet")


def approval_failure(status: TransferStatus) -> ChainError:
    """The error for an approval the chain says can never land."""
    if status.error in (evm_status.AUTHORIZATION_EXPIRED, evm_status.NONCE_USED_ELSEWHERE):
        return ApprovalExpired(
            "the approval lapsed without landing (validBefore passed, or the user's nonce "
            "was used by another transaction); ask for a fresh approval"
        )
    return ApprovalRejected(
        f"the approval can never land ({status.error}): its nonce was used by another "
        "transfer, or the chain reverted it; nothing moved"
    )
