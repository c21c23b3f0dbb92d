"""Session keys: funded wallets for one agent. Create → approve → active → … → closed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.protocol import ChainAdapter, ChainError, TokenInfo
from zpay.custody import SealedSecret
from zpay.domain.errors import Conflict, InvalidRequest, NotFound, ZpayError
from zpay.domain.lifecycle import KeyStatus, transition
from zpay.domain.money import parse_amount
from zpay.domain.policy import KeyState, authorize
from zpay.domain.windows import Window
from zpay.services import approval_links
from zpay.services import fields as f
from zpay.services.agents import load_agent
from zpay.services.auth import Principal
from zpay.services.chain_errors import as_zpay_error
from zpay.services.context import AppContext
from zpay.services.events import emit
from zpay.services.pagination import Page, page_body
from zpay.services.recipients import check_recipient
from zpay.services.requests import Request
from zpay.services.rows import table_of, transient
from zpay.services.sessions import load_session, policy_state, read_session, resolve_expiry
from zpay.services.tenancy import (
    copy_owned,
    fetch_owned,
    owned_statement,
    owned_values,
    visible,
)
from zpay.services.views import amount, attempt_view, session_key_view
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import Approval, PaymentAttempt, SessionKey, WalletSecret


class SessionKeyRequest(Request):
    agent_id: f.Id
    user_wallet: f.Address
    max_amount: f.Amount
    chain: f.ChainName | None = None
    token: f.Symbol = "USDC"
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None
    session_id: f.Id | None = None
    refund_on_close: bool = True
    approval_method: f.Method | None = None


def key_state(key: SessionKey) -> KeyState:
    return KeyState(status=key.status, expires_at=key.expires_at, funded=key.funded_amount,
                    spent=key.spent_amount, held=key.held_amount, refunded=key.refunded_amount)


def token_of(key: SessionKey, adapter: ChainAdapter) -> TokenInfo:
    token = adapter.token(key.token_symbol)
    if token.address != key.token_address:
        raise ZpayError("the chain's token differs from the key's", code="chain_state_mismatch")
    return token


async def load_key(s: AsyncSession, principal: Principal, key_id: str,
                   *, lock: bool = False) -> SessionKey:
    key = await fetch_owned(s, SessionKey, key_id, principal, lock=lock)
    return _owned_key(principal, key_id, key)


async def read_key(x: Executor, principal: Principal, key_id: str) -> SessionKey:
    """`load_key` on the hot path's executors, as a transient copy."""
    return _owned_key(principal, key_id, await copy_owned(x, SessionKey, key_id, principal))


def _owned_key(principal: Principal, key_id: str, key: SessionKey | None) -> SessionKey:
    if key is None or (principal.agent_id is not None and key.agent_id != principal.agent_id) or (
        principal.policy_session_id is not None
        and key.policy_session_id != principal.policy_session_id
    ):
        raise NotFound(f"no session key {key_id!r}", code="session_key_not_found")
    return key


async def load_secret(ctx: AppContext, s: AsyncSession, key: SessionKey) -> bytes:
    row = await s.get(WalletSecret, key.id)
    assert row is not None
    return _open_secret(ctx, key, row)


_KEYS, _SECRETS = table_of(SessionKey), table_of(WalletSecret)
# `read_key`'s statement with the wallet secret joined, built once (by token scope).
_KEY_AND_SECRET = {scoped: owned_statement(SessionKey, lock=False, scoped=scoped).add_columns(
    _SECRETS.c.key_version.label("secret_key_version"),
    _SECRETS.c.wrapped_data_key.label("secret_wrapped_data_key"),
    _SECRETS.c.ciphertext.label("secret_ciphertext"),
).outerjoin(_SECRETS, _SECRETS.c.session_key_id == _KEYS.c.id) for scoped in (False, True)}


def key_and_secret_query(principal: Principal, key_id: str) -> tuple[Select[Any], dict[str, Any]]:
    """A key and its wallet secret in one read (a payment's signing step): the statement
    (built once) and its values; `key_and_secret_of` makes the answer of its row."""
    return (_KEY_AND_SECRET[principal.policy_session_id is not None],
            owned_values(key_id, principal))


def key_and_secret_of(ctx: AppContext, principal: Principal, key_id: str,
                      row: Any) -> tuple[SessionKey, bytes]:
    """The key (as `read_key` checks it) and its opened wallet secret, from that read's row
    (None: no such key)."""
    if row is None:
        raise NotFound(f"no session key {key_id!r}", code="session_key_not_found")
    columns = row._mapping
    key = _owned_key(principal, key_id, transient(
        SessionKey, {c.key: columns[c.key] for c in _KEYS.columns}))
    secret = {name: columns[f"secret_{name}"]
              for name in ("key_version", "wrapped_data_key", "ciphertext")}
    assert secret["ciphertext"] is not None
    return key, ctx.custody.open(key.id, SealedSecret(**secret))


def _open_secret(ctx: AppContext, key: SessionKey, row: WalletSecret) -> bytes:
    return ctx.custody.open(key.id, SealedSecret(row.key_version, row.wrapped_data_key,
                                                 row.ciphertext))


def key_event(s: AsyncSession, key: SessionKey, type_: str, now: datetime,
               **extra: Any) -> None:
    emit(s, merchant_id=key.merchant_id, type=type_, object_type="session_key", object_id=key.id,
         data={**session_key_view(key), **extra}, now=now)


async def create_session_key(ctx: AppContext, principal: Principal,
                             req: SessionKeyRequest) -> dict[str, Any]:
    principal.require_merchant("create session keys")
    now = ctx.now()
    adapter = ctx.chains.get(req.chain or ctx.settings.default_chain)
    token = ctx.chains.token(adapter.network.name, req.token)
    max_amount = parse_amount(req.max_amount, decimals=token.decimals,
                              max_base_units=token.max_base_units)
    user_wallet = adapter.validate_address(req.user_wallet)
    expires_at = resolve_expiry(now, req.expires_at, req.expires_in_seconds, required=True)
    assert expires_at is not None
    wallet = adapter.generate_wallet()
    key_id = new_id("skey")
    async with ctx.db.transaction() as s:
        await load_agent(s, principal, req.agent_id)
        if req.session_id is not None:
            policy = await load_session(s, principal, req.session_id)
            _check_linkable(policy.agent_id, policy.status, policy.token_symbol, req.agent_id,
                            req.token)
        key = SessionKey(
            id=key_id, merchant_id=principal.merchant_id, agent_id=req.agent_id,
            chain=adapter.network.name, token_symbol=token.symbol, token_address=token.address,
            decimals=token.decimals, user_wallet=user_wallet, address=wallet.address,
            status=KeyStatus.PENDING_APPROVAL.value, max_amount=max_amount, funded_amount=0,
            spent_amount=0, held_amount=0, refunded_amount=0, transaction_count=0,
            policy_session_id=req.session_id, refund_on_close=req.refund_on_close,
            refund_status=None, refund_tx_id=None, expires_at=expires_at, last_activity_at=None,
            created_at=now, updated_at=now, revoked_at=None)
        s.add(key)
        await s.flush()
        sealed = ctx.custody.seal(key_id, wallet.secret)
        s.add(WalletSecret(session_key_id=key_id, key_version=sealed.key_version,
                           wrapped_data_key=sealed.wrapped_data_key, ciphertext=sealed.ciphertext))
        approval = await issue_approval(s, adapter, key, token, "funding", max_amount,
                                         req.approval_method, now)
        key_event(s, key, "session_key.created", now)
    return approval_links.with_url(ctx, session_key_view(key, approval), key, approval)


def _check_linkable(policy_agent: str, policy_status: str, policy_token: str, key_agent: str,
                    key_token: str) -> None:
    if policy_agent != key_agent:
        raise InvalidRequest("the session belongs to another agent", code="session_agent_mismatch")
    if policy_status != "active":
        raise Conflict("the session is not active", code="session_not_active")
    if policy_token != key_token:
        raise InvalidRequest("the session limits another token", code="token_mismatch")


async def issue_approval(s: AsyncSession, adapter: ChainAdapter, key: SessionKey,
                         token: TokenInfo, kind: str, amount_base_units: int,
                         method: str | None, now: datetime,
                         funding_id: str | None = None) -> Approval:
    """A new approval to sign. A renewal passes its funding's `funding_id`: the chain-level
    identity (EIP-3009 nonce, memo) derives from it, so versions exclude each other."""
    approval_id = new_id("apr")
    funding_id = funding_id or approval_id
    try:
        issued = await adapter.build_approval(
            approval_id=funding_id, user_wallet=key.user_wallet, session_wallet=key.address,
            token=token, amount_base_units=amount_base_units, method=method)
    except ChainError as exc:
        raise as_zpay_error(exc, f"building an approval for {key.id}") from exc
    approval = Approval(id=approval_id, merchant_id=key.merchant_id, session_key_id=key.id,
                        kind=kind, amount=amount_base_units, method=method, status="pending",
                        funding_id=funding_id,
                        public=issued.public, private=issued.private, expires_at=issued.expires_at,
                        tx_id=None, created_at=now, confirmed_at=None)
    s.add(approval)
    return approval


async def find_approval(s: AsyncSession, key: SessionKey, approval_id: str | None,
                         kind: str) -> Approval:
    stmt = select(Approval).where(Approval.session_key_id == key.id, Approval.kind == kind)
    if approval_id is not None:
        stmt = stmt.where(Approval.id == approval_id)
    approval = (await s.execute(stmt.order_by(Approval.id.desc()).limit(1))).scalar()
    if approval is None:
        raise NotFound("no such approval", code="approval_not_found")
    return approval


async def get_status(ctx: AppContext, principal: Principal, key_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        key = await load_key(s, principal, key_id)
        approval = None
        if key.status == KeyStatus.PENDING_APPROVAL:
            approval = await find_approval(s, key, None, "funding")
    body = session_key_view(key, approval)
    if approval is not None:
        approval_links.with_url(ctx, body, key, approval)
    if key.status in (KeyStatus.ACTIVE, KeyStatus.EXHAUSTED, KeyStatus.PENDING_APPROVAL) and (
        ctx.now() >= key.expires_at
    ):
        body["status"] = KeyStatus.EXPIRED.value  # the scheduler has not caught up yet
    return body


async def list_session_keys(ctx: AppContext, principal: Principal, page: Page,
                            status: str | None = None,
                            agent_id: str | None = None) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        stmt = visible(SessionKey, principal)
        if agent_id is not None:
            stmt = stmt.where(SessionKey.agent_id == agent_id)
        if status is not None:
            if status not in set(KeyStatus):
                raise InvalidRequest(f"unknown status {status!r}", code="invalid_status",
                                     known_statuses=[k.value for k in KeyStatus])
            stmt = stmt.where(SessionKey.status == status)
        rows = (await s.execute(page.apply(stmt, SessionKey.id))).scalars().all()
    return page_body(rows, page, session_key_view)


async def revoke(ctx: AppContext, principal: Principal, key_id: str) -> dict[str, Any]:
    principal.require_merchant("revoke session keys")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        revoke_locked(s, key, now, revoked_by="merchant")
    return session_key_view(key)


def revoke_locked(s: AsyncSession, key: SessionKey, now: datetime, *, revoked_by: str) -> None:
    """Revoke `key` (locked by the caller) at once: no payment authorizes after this commit;
    the refund job returns the remainder. `revoked_by`: "merchant" or "user"."""
    key.status = transition(KeyStatus(key.status), KeyStatus.REVOKED).value
    key.revoked_at = key.updated_at = now
    if key.refund_on_close:
        key.refund_status = "pending"
    key_event(s, key, "session_key.revoked", now, revoked_by=revoked_by)


async def link(ctx: AppContext, principal: Principal, key_id: str,
               session_id: str) -> dict[str, Any]:
    principal.require_merchant("link sessions")
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        policy = await load_session(s, principal, session_id)
        _check_linkable(policy.agent_id, policy.status, policy.token_symbol, key.agent_id,
                        key.token_symbol)
        key.policy_session_id, key.updated_at = policy.id, ctx.now()
    return session_key_view(key)


async def unlink(ctx: AppContext, principal: Principal, key_id: str) -> dict[str, Any]:
    principal.require_merchant("unlink sessions")
    async with ctx.db.transaction() as s:
        key = await load_key(s, principal, key_id, lock=True)
        if key.policy_session_id is None:
            raise Conflict("the session key is not linked", code="not_linked")
        key.policy_session_id, key.updated_at = None, ctx.now()
    return session_key_view(key)


async def can_afford(ctx: AppContext, principal: Principal, key_id: str,
                     amount_text: str, recipient: str | None = None) -> dict[str, Any]:
    """Authorization step 1 without writing a hold."""
    now = ctx.now()
    async with ctx.db.hot_reads() as x:
        key = await read_key(x, principal, key_id)
        adapter = ctx.chains.get(key.chain)
        token = token_of(key, adapter)
        value = parse_amount(amount_text, decimals=token.decimals,
                             max_base_units=token.max_base_units)
        policy = None
        if key.policy_session_id is not None:
            row = await read_session(x, principal, key.policy_session_id)
            policy = await policy_state(x, row, now)
    target = adapter.validate_address(recipient) if recipient else None
    if target is not None:
        check_recipient(adapter, session_wallet=key.address, token=token, recipient=target)
    decision = authorize(value, key=key_state(key), policy=policy, recipient=target,
                         chain=key.chain, now=now)
    reason = decision.reason
    d = key.decimals
    remaining = decision.window_remaining
    return {
        "object": "can_afford", "session_key_id": key.id, "amount": amount(value, d),
        "allowed": reason == "approved", "reason": reason,
        "effective_limit": amount(decision.effective_limit, d),
        "session_key_remaining": amount(decision.session_key_remaining, d),
        "session_remaining_today": amount(remaining[Window.DAY], d),
        "session_remaining_week": amount(remaining[Window.WEEK], d),
        "session_remaining_month": amount(remaining[Window.MONTH], d),
        "linked_session_id": key.policy_session_id,
    }


async def list_attempts(ctx: AppContext, principal: Principal, key_id: str,
                        page: Page) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        key = await load_key(s, principal, key_id)
        stmt = select(PaymentAttempt).where(PaymentAttempt.session_key_id == key.id)
        rows = (await s.execute(page.apply(stmt, PaymentAttempt.id))).scalars().all()
    return page_body(rows, page, lambda a: attempt_view(a, key.decimals))
