"""User self-service: sign in with the wallet that funded the keys, see them, revoke them.

1. `issue_challenge`: a fresh single-use nonce (stored, expiring) and the SIWS / EIP-4361
   message for this deployment's domain that the wallet is asked to sign.
2. `sign_in`: the signed message is parsed and checked (`zpay.domain.signin.check`: domain,
   chain, validity), its signature verified for the address it names, then its nonce is
   consumed by one conditional UPDATE — a replay finds it used. A server-side session opens;
   the browser gets only a random token (its SHA-256 is stored).
3. `my_keys` / `my_key`: every session key whose `user_wallet` is the signed-in wallet, on
   any merchant of this deployment; nothing else (another wallet's key is a 404).
4. `revoke_key`: the same revocation as the merchant's (`session_keys.revoke_locked`), with
   `revoked_by: "user"`; the refund job returns the remainder to `user_wallet`.

Users are not merchants: a session here belongs to a wallet, not to a merchant, and reaches
only rows whose `user_wallet` is that wallet.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.message_signatures import signed_by
from zpay.chains.protocol import ChainError, Family
from zpay.chains.registry import NetworkSpec, get_network, known_networks
from zpay.domain import signin, tokens
from zpay.domain.errors import InvalidRequest, NotFound
from zpay.domain.lifecycle import KeyStatus, is_live
from zpay.domain.signin import Flavor, SignInRefused
from zpay.services.context import AppContext
from zpay.services.session_keys import revoke_locked
from zpay.services.session_tokens import csrf_digest, new_session_token
from zpay.services.views import amount, ts
from zpay.store.ids import new_id
from zpay.store.models import Agent, Approval, Merchant, Payment, SessionKey
from zpay.store.user_models import SignInNonce, UserSession

SESSION_TTL = timedelta(hours=12)
NONCE_TTL = signin.MAX_LIFETIME
PAYMENTS_SHOWN = 50  # per key, newest first
KEYS_SHOWN = 200  # per wallet, newest first
_CSRF_LABEL = b"zpay-user-csrf-v1"
_FLAVOR = {Family.SOLANA: Flavor.SOLANA, Family.EVM: Flavor.ETHEREUM}
_FAMILY = {flavor: family for family, flavor in _FLAVOR.items()}


def csrf_token_for(session_token: str) -> str:
    """The synchronizer token of a session: an HMAC of its secret token, nothing stored."""
    return csrf_digest(session_token, _CSRF_LABEL).hex()


def chain_id_for_signin(spec: NetworkSpec) -> str:
    """What `Chain ID:` says for a network: EIP-155 id on EVM, the Wallet Standard chain
    ("solana:devnet", "solana:localnet") on Solana."""
    if spec.info.chain_id is not None:
        return str(spec.info.chain_id)
    return spec.wallet_chain


def _served(ctx: AppContext, family: Family) -> list[NetworkSpec]:
    specs = [get_network(name) for name in ctx.settings.chains]
    return [spec for spec in specs if spec.info.family is family]


def _family(value: str) -> Family:
    try:
        return Family(value)
    except ValueError:
        raise InvalidRequest("family must be 'solana' or 'evm'", code="invalid_request") from None


def signin_families(ctx: AppContext) -> list[str]:
    """The wallet families a user can sign in with here: those of the chains served."""
    return [f.value for f in Family if _served(ctx, f)]


# ------------------------------------------------------------------ signing in


async def issue_challenge(ctx: AppContext, *, family: str, address: str, domain: str,
                          uri: str) -> dict[str, Any]:
    wallet_family = _family(family)
    served = _served(ctx, wallet_family)
    if not served:
        raise InvalidRequest(f"no {wallet_family.value} chain is served here",
                             code="signin_chain_unsupported")
    try:
        canonical = ctx.chains.get(served[0].info.name).validate_address(address)
    except ChainError as exc:
        raise InvalidRequest(f"{address!r} is not a {wallet_family.value} address",
                             code="invalid_address") from exc
    now = ctx.now()
    nonce = signin.new_nonce()
    message = signin.build(_FLAVOR[wallet_family], domain=domain, address=canonical, uri=uri,
                           chain_id=chain_id_for_signin(served[0]), nonce=nonce,
                           issued_at=now, expires_at=now + NONCE_TTL)
    async with ctx.db.transaction() as s:
        await s.execute(delete(SignInNonce).where(SignInNonce.expires_at < now - NONCE_TTL))
        s.add(SignInNonce(nonce=nonce, created_at=now, expires_at=now + NONCE_TTL,
                          used_at=None))
    return {"object": "signin_challenge", "family": wallet_family.value, "address": canonical,
            "message": message.text(), "nonce": nonce,
            "expires_at": ts(now + NONCE_TTL)}


@dataclass(frozen=True)
class SignedIn:
    token: str  # the cookie's value: shown to the browser once, stored hashed
    wallet: str
    family: Family
    expires_at: datetime


async def sign_in(ctx: AppContext, *, message: str, signature: str,
                  domain: str) -> SignedIn:
    """Open a user session from a signed SIWS / EIP-4361 message, or raise `SignInRefused`
    (`signin_domain_mismatch`, `signin_expired`, `signin_not_yet_valid`,
    `signin_chain_unsupported`, `signin_signature_invalid`, `signin_nonce_invalid`,
    `signin_nonce_used`) or `SignInMessageInvalid`."""
    now = ctx.now()
    parsed = signin.parse(message)
    family = _FAMILY[parsed.flavor]
    chain_ids = {chain_id_for_signin(spec) for spec in _served(ctx, family)}
    signin.check(parsed, domain=domain, chain_ids=chain_ids, now=now)
    if not signed_by(family, parsed.address, message, signature):
        raise SignInRefused("the signature is not this wallet's signature of this message",
                            code="signin_signature_invalid")
    token = new_session_token()
    expires_at = now + SESSION_TTL
    async with ctx.db.transaction() as s:
        await _consume_nonce(s, parsed.nonce or "", now)
        await s.execute(delete(UserSession).where(UserSession.expires_at < now))
        s.add(UserSession(id=new_id("usess"), token_hash=tokens.token_hash(token),
                          family=family.value, wallet=parsed.address, created_at=now,
                          expires_at=expires_at, ended_at=None))
    return SignedIn(token=token, wallet=parsed.address, family=family, expires_at=expires_at)


async def _consume_nonce(s: AsyncSession, nonce: str, now: datetime) -> None:
    """Mark the nonce used, if it is still usable: one UPDATE, so of two concurrent
    sign-ins with one nonce exactly one succeeds."""
    result = await s.execute(
        update(SignInNonce)
        .where(SignInNonce.nonce == nonce, SignInNonce.used_at.is_(None),
               SignInNonce.expires_at > now)
        .values(used_at=now))
    if getattr(result, "rowcount", 0) == 1:
        return
    row = await s.get(SignInNonce, nonce)
    if row is not None and row.used_at is not None:
        raise SignInRefused("this sign-in message was already used; sign a fresh one",
                            code="signin_nonce_used")
    raise SignInRefused("zpay did not issue this nonce, or it has expired; sign a fresh one",
                        code="signin_nonce_invalid")


@dataclass(frozen=True)
class WalletUser:
    session_id: str
    family: Family
    wallet: str
    csrf_token: str
    expires_at: datetime


async def resolve(ctx: AppContext, session_token: str | None) -> WalletUser | None:
    """The signed-in wallet of this cookie, or None (absent, unknown, ended, expired)."""
    if not session_token or len(session_token) > 200:
        return None
    async with ctx.db.sessions() as s:
        row = (await s.execute(select(UserSession).where(
            UserSession.token_hash == tokens.token_hash(session_token)))).scalar()
    if row is None or row.ended_at is not None or ctx.now() >= row.expires_at:
        return None
    return WalletUser(session_id=row.id, family=Family(row.family), wallet=row.wallet,
                      csrf_token=csrf_token_for(session_token), expires_at=row.expires_at)


async def sign_out(ctx: AppContext, user: WalletUser) -> None:
    async with ctx.db.transaction() as s:
        row = await s.get(UserSession, user.session_id, with_for_update=True)
        if row is not None and row.ended_at is None:
            row.ended_at = ctx.now()


# ------------------------------------------------------------------ the user's keys


def _networks_of(family: Family) -> list[str]:
    return [name for name in known_networks() if get_network(name).info.family is family]


def _owned(user: WalletUser) -> Any:
    return select(SessionKey).where(SessionKey.user_wallet == user.wallet,
                                    SessionKey.chain.in_(_networks_of(user.family)))


def _status(key: SessionKey, now: datetime) -> str:
    if is_live(KeyStatus(key.status)) and now >= key.expires_at:
        return KeyStatus.EXPIRED.value  # the scheduler has not caught up yet
    return key.status


def _tx(spec: NetworkSpec, tx_id: str | None) -> dict[str, Any] | None:
    return None if not tx_id else {"id": tx_id, "url": spec.explorer_url(tx_id)}


def _key_view(key: SessionKey, merchant: str, agent: str, funding_tx: str | None,
              payments: list[Payment], payment_count: int, now: datetime) -> dict[str, Any]:
    d = key.decimals
    spec = get_network(key.chain)
    status = _status(key, now)
    remaining = key.funded_amount - key.spent_amount - key.held_amount - key.refunded_amount
    return {
        "id": key.id, "status": status, "merchant": merchant, "agent": agent,
        "chain": key.chain, "chain_label": spec.label, "token": key.token_symbol,
        "session_wallet": key.address, "user_wallet": key.user_wallet,
        "max_amount": amount(key.max_amount, d), "funded": amount(key.funded_amount, d),
        "spent": amount(key.spent_amount, d), "held": amount(key.held_amount, d),
        "remaining": amount(remaining, d), "refunded": amount(key.refunded_amount, d),
        "spent_percent": (key.spent_amount * 100 // key.funded_amount
                          if key.funded_amount else 0),
        "expires_at": ts(key.expires_at), "created_at": ts(key.created_at),
        "revoked_at": ts(key.revoked_at), "refund_on_close": key.refund_on_close,
        "refund_status": key.refund_status, "refund_tx": _tx(spec, key.refund_tx_id),
        "funding_tx": _tx(spec, funding_tx),
        "can_revoke": is_live(KeyStatus(status)),
        "payment_count": payment_count,
        "payments": [{"id": p.id, "amount": amount(p.amount, d), "token": key.token_symbol,
                      "recipient": p.recipient, "status": p.status,
                      "description": p.description, "tx": _tx(spec, p.tx_id),
                      "failure_code": p.failure_code, "created_at": ts(p.created_at)}
                     for p in payments],
    }


async def _views(ctx: AppContext, s: AsyncSession, keys: list[SessionKey]) -> list[dict[str, Any]]:
    if not keys:
        return []
    ids = [k.id for k in keys]
    merchants = {mid: name for mid, name in (await s.execute(
        select(Merchant.id, Merchant.name).where(
            Merchant.id.in_({k.merchant_id for k in keys})))).all()}
    agents = {aid: name for aid, name in (await s.execute(
        select(Agent.id, Agent.name).where(Agent.id.in_({k.agent_id for k in keys})))).all()}
    funding: dict[str, str] = {}
    for key_id, tx_id in (await s.execute(
            select(Approval.session_key_id, Approval.tx_id).where(
                Approval.session_key_id.in_(ids), Approval.kind == "funding",
                Approval.status == "confirmed").order_by(Approval.id))).all():
        if tx_id:
            funding.setdefault(key_id, tx_id)
    counts = {kid: int(n) for kid, n in (await s.execute(
        select(Payment.session_key_id, func.count()).where(Payment.session_key_id.in_(ids))
        .group_by(Payment.session_key_id))).all()}
    by_key: dict[str, list[Payment]] = defaultdict(list)
    for key_id in ids:
        if counts.get(key_id):
            rows = (await s.execute(
                select(Payment).where(Payment.session_key_id == key_id)
                .order_by(Payment.created_at.desc(), Payment.id.desc())
                .limit(PAYMENTS_SHOWN))).scalars().all()
            by_key[key_id] = list(rows)
    now = ctx.now()
    return [_key_view(k, merchants.get(k.merchant_id, ""), agents.get(k.agent_id, ""),
                      funding.get(k.id), by_key[k.id], counts.get(k.id, 0), now)
            for k in keys]


async def my_keys(ctx: AppContext, user: WalletUser) -> list[dict[str, Any]]:
    """The wallet's session keys, live ones first, newest first within each group."""
    async with ctx.db.sessions() as s:
        keys = list((await s.execute(
            _owned(user).order_by(SessionKey.created_at.desc(), SessionKey.id.desc())
            .limit(KEYS_SHOWN))).scalars().all())
        views = await _views(ctx, s, keys)
    return sorted(views, key=lambda v: not v["can_revoke"])  # stable: keeps newest first


async def my_key(ctx: AppContext, user: WalletUser, key_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        key = (await s.execute(_owned(user).where(SessionKey.id == key_id))).scalar()
        if key is None:
            raise NotFound(f"no session key {key_id!r}", code="session_key_not_found")
        [view] = await _views(ctx, s, [key])
    return view


async def revoke_key(ctx: AppContext, user: WalletUser, key_id: str) -> dict[str, Any]:
    """Revoke one of the wallet's keys now: the agent's next payment is refused, and the
    refund job returns the remainder to the wallet. Another wallet's key is a 404."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key = (await s.execute(_owned(user).where(SessionKey.id == key_id)
                               .with_for_update())).scalar()
        if key is None:
            raise NotFound(f"no session key {key_id!r}", code="session_key_not_found")
        revoke_locked(s, key, now, revoked_by="user")
    return await my_key(ctx, user, key_id)
