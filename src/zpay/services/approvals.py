"""Approvals the user signs: funding and top-ups, finished from the chain.

Submitting checks the user's signature against what zpay issued, records the transfer
(services.transfers) BEFORE it is sent, sends it, and books the funding when the chain
shows it landed. A crash at any point is finished by reconciliation from the recorded
transfer; a lapsed approval can be renewed, and every renewal of one funding shares its
chain identity (`funding_id`), so at most one version can ever move the user's money.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import ChainError, IssuedApproval, TransferState, TransferStatus
from zpay.domain.errors import Conflict, ZpayError
from zpay.domain.lifecycle import KeyStatus, is_live, transition
from zpay.domain.money import parse_amount
from zpay.services import approval_links, transfers
from zpay.services.auth import Principal
from zpay.services.books import book, ledger_of
from zpay.services.chain_errors import as_zpay_error, message_for
from zpay.services.context import AppContext
from zpay.services.session_keys import (
    find_approval,
    issue_approval,
    key_event,
    load_key,
    token_of,
)
from zpay.services.views import amount, approval_view, session_key_view
from zpay.store.models import Approval, ChainTransfer, SessionKey

# The node refused the approval before the chain took it: the user may fix the cause (e.g.
# fund the wallet) and submit the same signed approval again.
_RETRYABLE = ("approval_rejected", "approval_signature_invalid", "transfer_failed")


def _signed_digest(signed: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(signed), sort_keys=True).encode()).hexdigest()


async def submit_approval(ctx: AppContext, principal: Principal, key_id: str,
                          signed: Mapping[str, Any], *, approval_id: str | None = None,
                          kind: str = "funding") -> dict[str, Any]:
    """Check the user's signed approval, record it, submit it and fund the key once the
    chain confirms. The same signed approval again is the same transfer: funded once."""
    principal.require_merchant("submit approvals")
    digest = _signed_digest(signed)
    async with ctx.db.sessions() as s:
        key = await load_key(s, principal, key_id)
        approval = await find_approval(s, key, approval_id, kind)
    _check_submittable(approval, key, digest, ctx)
    if approval.status == "confirmed":
        return session_key_view(key)
    adapter = ctx.chains.get(key.chain)
    try:
        async with asyncio.timeout(ctx.settings.confirm_timeout_s):
            prepared = await adapter.prepare_approval(
                issued=IssuedApproval(approval.public, approval.private, approval.expires_at),
                user_wallet=key.user_wallet, session_wallet=key.address,
                token=token_of(key, adapter), amount_base_units=approval.amount, signed=signed)
    except TimeoutError:
        raise ZpayError(message_for("chain_unavailable"), code="chain_unavailable") from None
    except ChainError as exc:
        if exc.code == "approval_expired":
            await _mark_lapsed(ctx, approval.id)
        raise as_zpay_error(exc, f"approval {approval.id}") from exc
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        approval = await _lock_approval(s, approval.id)
        _check_submittable(approval, key, digest, ctx)
        if approval.status == "confirmed":
            return session_key_view(key)
        transfer = (await s.execute(select(ChainTransfer).where(
            ChainTransfer.reference == prepared.reference))).scalar()
        if transfer is None:
            if await _pending_transfer(s, approval.id) is not None:
                raise Conflict("another signature of this approval is being submitted",
                               code="approval_in_flight")
            transfer = transfers.record(s, key=key, kind="approval", subject_id=approval.id,
                                        prepared=prepared, amount=approval.amount, now=now)
        elif transfer.subject_id != approval.id:
            raise Conflict("this signed approval belongs to another approval",
                           code="approval_mismatch")
        elif transfer.status == transfers.FAILED:
            # The same signed bytes again, after the node had refused them: try once more.
            transfer.status, transfer.failure_code, transfer.updated_at = (
                transfers.PENDING, None, now)
        approval.status = "submitting"
        approval.private = {**approval.private, "signed_digest": digest}
    status = await transfers.send_and_wait(adapter, prepared, ctx.settings.confirm_timeout_s)
    body = await settle(ctx, transfer.id, status)
    if status.state is TransferState.CONFIRMED:
        return body
    if status.state is TransferState.FAILED:
        code = status.error if status.error in _RETRYABLE else "approval_expired"
        if code == "transfer_failed":
            code = "approval_rejected"
        raise ZpayError(message_for(code), code=code)
    raise ZpayError("the approval was sent; the key activates once the chain confirms it",
                    code="approval_pending", session_key_id=key_id)


def _check_submittable(approval: Approval, key: SessionKey, digest: str,
                       ctx: AppContext) -> None:
    if approval.status == "confirmed":
        if approval.private.get("signed_digest") != digest:
            raise Conflict("this approval is already confirmed", code="approval_already_used")
        return
    if approval.status in ("superseded", "expired"):
        raise ZpayError(message_for("approval_expired"), code="approval_expired")
    if approval.status != "submitting" and (
        not is_live(KeyStatus(key.status)) or ctx.now() >= key.expires_at
    ):
        raise Conflict(f"the session key is {key.status}", code="session_key_not_live")


async def _lock_approval(s: AsyncSession, approval_id: str) -> Approval:
    return (await s.execute(select(Approval).where(Approval.id == approval_id).with_for_update()
                            .execution_options(populate_existing=True))).scalar_one()


async def _pending_transfer(s: AsyncSession, approval_id: str) -> ChainTransfer | None:
    return (await s.execute(select(ChainTransfer).where(
        ChainTransfer.subject_id == approval_id, ChainTransfer.kind == "approval",
        ChainTransfer.status == transfers.PENDING).limit(1))).scalar()


async def _mark_lapsed(ctx: AppContext, approval_id: str) -> None:
    async with ctx.db.transaction() as s:
        approval = await _lock_approval(s, approval_id)
        if approval.status == "pending" and await _pending_transfer(s, approval_id) is None:
            approval.status = "expired"


async def settle(ctx: AppContext, transfer_id: str, status: TransferStatus) -> dict[str, Any]:
    """Book an approval's transfer from the chain's answer: landed → the key is funded
    (and activated, if it still can be; a closed key's late funds are refunded); failed →
    the approval can be submitted again (a refusal) or renewed (it lapsed)."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await transfers.lock_key_of(s, transfer_id)
        transfer = await transfers.lock(s, transfer_id)
        approval = await _lock_approval(s, transfer.subject_id)
        code = status.error if status.state is TransferState.FAILED else None
        if not transfers.conclude(transfer, status, code, now):
            return session_key_view(key)
        if status.state is TransferState.CONFIRMED:
            _fund(s, key, approval, transfer.tx_id, now)
        elif approval.status == "submitting":
            approval.status = "pending" if code in _RETRYABLE else "expired"
        return session_key_view(key)


def _fund(s: AsyncSession, key: SessionKey, approval: Approval, tx_id: str | None,
          now: datetime) -> None:
    approval.status, approval.tx_id, approval.confirmed_at = "confirmed", tx_id, now
    book(key, ledger_of(key).fund(approval.amount))
    key.updated_at = now
    previous = KeyStatus(key.status)
    if not is_live(previous) or now >= key.expires_at:
        # The money arrived after the key closed: it goes back to the user.
        if key.refund_on_close and key.refund_status != "sweeping":
            key.refund_status = "pending"
        return
    if previous in (KeyStatus.PENDING_APPROVAL, KeyStatus.EXHAUSTED):
        key.status = transition(previous, KeyStatus.ACTIVE).value
    if previous is KeyStatus.PENDING_APPROVAL:
        key_event(s, key, "session_key.activated", now, tx_id=tx_id)
    else:
        key_event(s, key, "session_key.topped_up", now, tx_id=tx_id,
                  top_up_amount=amount(approval.amount, key.decimals))


async def renew_approval(ctx: AppContext, principal: Principal, key_id: str,
                         approval_id: str | None = None, kind: str = "funding") -> dict[str, Any]:
    """A fresh approval for the same amount. It shares the funding's chain identity, so
    the previous version and this one can never both move money; and none is issued while
    a signed version may still land."""
    principal.require_merchant("renew approvals")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        old = await find_approval(s, key, approval_id, kind)
        if old.status in ("confirmed", "submitting"):
            raise Conflict(f"the approval is {old.status}", code="approval_not_renewable")
        if not is_live(KeyStatus(key.status)):
            raise Conflict(f"the session key is {key.status}", code="session_key_not_live")
        old.status = "superseded"
        adapter = ctx.chains.get(key.chain)
        new = await issue_approval(s, adapter, key, token_of(key, adapter), kind, old.amount,
                                   old.method, now, funding_id=old.funding_id)
    return approval_links.with_url(ctx, approval_view(new), key, new)


async def create_top_up(ctx: AppContext, principal: Principal, key_id: str, amount_text: str,
                        method: str | None = None) -> dict[str, Any]:
    principal.require_merchant("top up session keys")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        if key.status not in (KeyStatus.ACTIVE, KeyStatus.EXHAUSTED) or now >= key.expires_at:
            raise Conflict(f"a {key.status} session key cannot be topped up",
                           code="session_key_not_live")
        adapter = ctx.chains.get(key.chain)
        token = token_of(key, adapter)
        value = parse_amount(amount_text, decimals=token.decimals,
                             max_base_units=token.max_base_units)
        approval = await issue_approval(s, adapter, key, token, "top_up", value, method, now)
    body = {**approval_view(approval), "session_key_id": key.id,
            "amount": amount(value, key.decimals)}
    return approval_links.with_url(ctx, body, key, approval)
