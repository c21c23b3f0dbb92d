"""What the chain says of a transfer, from the chain alone (no process memory).

Authorizations (payments, sweeps, EIP-3009 approvals): ONE block is read (number and
timestamp) and authorizationState is asked AT that block number, so a transaction mined
between two reads can never make an outcome look like another:

- used at the block → CONFIRMED once `confirmations` deep (the tx id from the
  AuthorizationUsed log), PENDING before; for an approval, FAILED if the transfer that
  used the nonce is not the approved one (the user spent the nonce elsewhere);
- unused, and the block is stamped at or past validBefore → FAILED: block timestamps
  only grow, the token refuses it from then on, whatever is still in some mempool;
- otherwise PENDING if a journaled relayer transaction carrying it was not mined by
  that block and is on the node, else UNKNOWN (re-sending the recorded payload is safe:
  it revives that very transaction). A relayer transaction that reverted is not a
  failure: the same authorization can be relayed again.

User-signed fallback transactions: receipt status 1 → CONFIRMED (deep enough); status
0 → FAILED (the user's nonce is consumed, it can never land); no receipt while the
sender's nonce, read at a block BEFORE the receipt, is past the transaction's → FAILED;
else PENDING if the node has it, UNKNOWN if not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from zpay.chains.evm_node import EvmNode
from zpay.chains.evm_refs import AuthorizationRef, TransactionRef, receipt_funds
from zpay.chains.protocol import ChainUnavailable, TransferState, TransferStatus

log = logging.getLogger(__name__)

# Stable codes in TransferStatus.error (the services record them as failure codes).
AUTHORIZATION_EXPIRED = "authorization_expired"
AUTHORIZATION_USED_ELSEWHERE = "authorization_used_elsewhere"
TRANSACTION_REVERTED = "transaction_reverted"
NONCE_USED_ELSEWHERE = "nonce_used_elsewhere"

# (authorization key, block number) -> a relayer tx carrying it, not mined by then, on the node
Outstanding = Callable[[str, int], Awaitable[str | None]]


async def authorization_status(
    node: EvmNode,
    ref: AuthorizationRef,
    *,
    tokens: Sequence[str],
    valid_before: int,
    confirmations: int,
    lookback_blocks: int,
    outstanding: Outstanding,
) -> TransferStatus:
    head = await node.block("latest")
    for token in tokens:
        if await node.authorization_used(token, ref.authorizer, ref.nonce, head.number):
            return await _used(node, token, ref, head.number, confirmations, lookback_blocks)
    if head.timestamp >= valid_before and await _final_past(
        node, head.number, valid_before, confirmations
    ):
        return TransferStatus(TransferState.FAILED, error=AUTHORIZATION_EXPIRED)
    tx_hash = await outstanding(ref.key, head.number)
    if tx_hash is not None:
        return TransferStatus(TransferState.PENDING, tx_id=tx_hash)
    return TransferStatus(TransferState.UNKNOWN)


async def _final_past(node: EvmNode, head: int, valid_before: int, confirmations: int) -> bool:
    """With confirmations > 1 the block deciding expiry must itself be final: a reorg
    could replace the head with a block stamped earlier."""
    if confirmations <= 1:
        return True
    deep = head - confirmations + 1
    return deep >= 0 and (await node.block(deep)).timestamp >= valid_before


async def _used(
    node: EvmNode,
    token: str,
    ref: AuthorizationRef,
    head: int,
    confirmations: int,
    lookback_blocks: int,
) -> TransferStatus:
    try:
        found = await node.authorization_log(
            token, ref.authorizer, ref.nonce, max(0, head - lookback_blocks), head
        )
    except ChainUnavailable as exc:  # e.g. a node that caps log ranges
        log.warning("AuthorizationUsed search failed (%s); judging depth by state", exc)
        found = None
    if found is None:
        # Used before the searched window (so deep), or the node cannot search logs.
        deep = head - confirmations + 1
        if deep >= 0 and await node.authorization_used(token, ref.authorizer, ref.nonce, deep):
            if ref.digest is not None:
                log.warning("approval %s used beyond the log window: not verified", ref.key)
            return TransferStatus(TransferState.CONFIRMED)
        return TransferStatus(TransferState.PENDING)
    tx_hash, mined_in = found
    deep = head - mined_in + 1 >= confirmations
    if ref.digest is not None:
        receipt = await node.receipt(tx_hash)
        if receipt is None:  # reorganised away between the two reads
            return TransferStatus(TransferState.PENDING, tx_id=tx_hash)
        if not receipt_funds(receipt, token, ref):
            if not deep:  # a reorg could still undo the other transfer
                return TransferStatus(TransferState.PENDING)
            return TransferStatus(
                TransferState.FAILED, tx_id=tx_hash, error=AUTHORIZATION_USED_ELSEWHERE
            )
    state = TransferState.CONFIRMED if deep else TransferState.PENDING
    return TransferStatus(state, tx_id=tx_hash)


async def transaction_status(
    node: EvmNode, ref: TransactionRef, *, confirmations: int
) -> TransferStatus:
    head = await node.block_number()
    # The nonce first, the receipt second: if the nonce was used by this very transaction
    # at or before `head`, its receipt is there by the time it is read.
    mined_nonce = await node.nonce(ref.sender, head)
    receipt = await node.receipt(ref.tx_hash)
    if receipt is not None:
        if int(receipt["status"]) != 1:
            return TransferStatus(
                TransferState.FAILED, tx_id=ref.tx_hash, error=TRANSACTION_REVERTED
            )
        if head - int(receipt["blockNumber"]) + 1 >= confirmations:
            return TransferStatus(TransferState.CONFIRMED, tx_id=ref.tx_hash)
        return TransferStatus(TransferState.PENDING, tx_id=ref.tx_hash)
    if mined_nonce > ref.nonce:
        return TransferStatus(TransferState.FAILED, error=NONCE_USED_ELSEWHERE)
    if await node.tx_known(ref.tx_hash):
        return TransferStatus(TransferState.PENDING, tx_id=ref.tx_hash)
    return TransferStatus(TransferState.UNKNOWN)
