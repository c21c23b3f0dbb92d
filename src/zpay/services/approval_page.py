"""The hosted approval page's use cases, each authorised by an approval link
(services.approval_links) and by nothing else.

A link names one approval; the page always acts on the CURRENT version of that funding
(a renewal supersedes the approval and shares its `funding_id`), so a link stays good across
renewals. Everything is done with the same services as the API (approvals.submit_approval,
renew_approval, faucet), as the key's merchant, for that key and that approval only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zpay.chains.registry import NetworkSpec, get_network
from zpay.domain.errors import Conflict, InvalidRequest
from zpay.domain.lifecycle import KeyStatus, is_live
from zpay.domain.money import display_amount, format_amount
from zpay.services import approvals, faucet
from zpay.services.approval_links import LinkGrant, LinkInvalid
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.store.models import Agent, Approval, Merchant, PolicySession, SessionKey

# Gas a local test user gets from the page's faucet when the approval is a transaction
# they pay the gas of (the EVM fallback form): far more than one transfer needs.
_LOCAL_GAS_WEI = 10**17


@dataclass(frozen=True)
class Limit:
    label: str
    value: str  # display amount


@dataclass(frozen=True)
class Review:
    """Everything the page shows, and the facts its script checks the wallet's bytes
    against. `state`: ready | submitting | confirmed | lapsed | closed."""

    state: str
    kind: str  # funding | top_up
    merchant: str
    agent: str
    amount: str  # display amount
    token: str
    network: NetworkSpec
    user_wallet: str
    session_wallet: str
    key_status: str
    key_expires_at: datetime
    approval_expires_at: datetime | None
    link_expires_at: datetime
    refund_on_close: bool
    user_pays_gas: bool
    limits: list[Limit]
    window_note: str | None
    funded: str
    remaining: str
    tx_id: str | None
    explorer_url: str | None
    renewable: bool
    facts: dict[str, Any] = field(default_factory=dict)


def link_principal(key: SessionKey) -> Principal:
    """The link acts as the key's merchant, for this key and approval only: the page's
    handlers never pass it anything else."""
    return Principal(key.merchant_id, Role.MERCHANT)


async def _current(s: AsyncSession, grant: LinkGrant) -> tuple[SessionKey, Approval]:
    key = await s.get(SessionKey, grant.key_id)
    named = await s.get(Approval, grant.approval_id)
    if key is None or named is None or named.session_key_id != key.id:
        raise LinkInvalid("no such approval link")
    latest = (await s.execute(
        select(Approval).where(Approval.session_key_id == key.id,
                               Approval.funding_id == named.funding_id)
        .order_by(Approval.id.desc()).limit(1))).scalar_one()
    return key, latest


def _state(ctx: AppContext, key: SessionKey, approval: Approval) -> str:
    if approval.status == "confirmed":
        return "confirmed"
    if approval.status == "submitting":
        return "submitting"
    if not is_live(KeyStatus(key.status)) or ctx.now() >= key.expires_at:
        return "closed"
    if approval.status != "pending" or (
        approval.expires_at is not None and ctx.now() >= approval.expires_at
    ):
        return "lapsed"
    return "ready"


def _limits(policy: PolicySession | None) -> tuple[list[Limit], str | None]:
    if policy is None:
        return [], None
    rows = [("Per payment", policy.max_per_transaction), ("Per day", policy.max_per_day),
            ("Per week", policy.max_per_week), ("Per month", policy.max_per_month),
            ("In total", policy.max_total)]
    limits = [Limit(label, display_amount(value, decimals=policy.decimals))
              for label, value in rows if value is not None]
    if policy.window_mode == "calendar":
        note = f"Days, weeks and months are calendar periods in {policy.timezone}."
    else:
        note = "Days, weeks and months are rolling: the last 24 hours, 7 days and 30 days."
    return limits, note if limits else None


def _facts(ctx: AppContext, key: SessionKey, approval: Approval,
           network: NetworkSpec) -> dict[str, Any]:
    """What the page's script compares the wallet's bytes with: the key's own records (its
    wallets, token, chain) and the approval's amount, never the bytes themselves."""
    public = approval.public
    facts: dict[str, Any] = {
        "family": network.info.family.value, "format": public.get("format"),
        "network": network.info.name, "chain_id": network.info.chain_id,
        "wallet_chain": network.wallet_chain, "token": key.token_symbol,
        "token_address": key.token_address, "decimals": key.decimals,
        "amount_base_units": str(approval.amount), "user_wallet": key.user_wallet,
        "session_wallet": key.address,
    }
    if network.info.family.value == "solana":
        # The platform's fee payer, and the session wallet's token account (the transaction
        # binds it to the session wallet through its create-account instruction).
        facts["fee_payer"] = public.get("fee_payer")
        facts["session_token_account"] = public.get("session_token_account")
    elif public.get("format") == "eip712":
        token = ctx.chains.get(key.chain).token(key.token_symbol)
        facts["eip712_name"], facts["eip712_version"] = token.eip712_name, token.eip712_version
    return facts


async def review(ctx: AppContext, grant: LinkGrant) -> Review:
    async with ctx.db.sessions() as s:
        key, approval = await _current(s, grant)
        merchant = await s.get(Merchant, key.merchant_id)
        agent = await s.get(Agent, key.agent_id)
        policy = (await s.get(PolicySession, key.policy_session_id)
                  if key.policy_session_id else None)
    assert merchant is not None and agent is not None
    network = get_network(key.chain)
    state = _state(ctx, key, approval)
    limits, window_note = _limits(policy)
    d = key.decimals
    return Review(
        state=state, kind=approval.kind, merchant=merchant.name,
        agent=agent.name, amount=display_amount(approval.amount, decimals=d),
        token=key.token_symbol, network=network, user_wallet=key.user_wallet,
        session_wallet=key.address, key_status=key.status, key_expires_at=key.expires_at,
        approval_expires_at=approval.expires_at, link_expires_at=grant.expires_at,
        refund_on_close=key.refund_on_close,
        user_pays_gas=approval.public.get("format") == "evm_transaction",
        limits=limits, window_note=window_note,
        funded=display_amount(key.funded_amount, decimals=d),
        remaining=display_amount(key.funded_amount - key.spent_amount - key.held_amount
                                 - key.refunded_amount, decimals=d),
        tx_id=approval.tx_id, explorer_url=network.explorer_url(approval.tx_id),
        renewable=state == "lapsed", facts=_facts(ctx, key, approval, network))


async def merchant_name(ctx: AppContext, grant: LinkGrant) -> str | None:
    """Whose approval an expired (but genuine) link was: the page names them."""
    async with ctx.db.sessions() as s:
        key = await s.get(SessionKey, grant.key_id)
        merchant = await s.get(Merchant, key.merchant_id) if key is not None else None
    return merchant.name if merchant is not None else None


async def to_sign(ctx: AppContext, grant: LinkGrant) -> dict[str, Any]:
    """What the wallet is handed: the approval as zpay issued it."""
    async with ctx.db.sessions() as s:
        _, approval = await _current(s, grant)
    return {"approval_id": approval.id, **approval.public}


async def status(ctx: AppContext, grant: LinkGrant) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        key, approval = await _current(s, grant)
    return {"state": _state(ctx, key, approval), "approval_status": approval.status,
            "key_status": key.status, "tx_id": approval.tx_id,
            "explorer_url": get_network(key.chain).explorer_url(approval.tx_id)}


async def submit(ctx: AppContext, grant: LinkGrant, signed: dict[str, Any]) -> dict[str, Any]:
    """Submit the user's signature of the current approval (approvals.submit_approval does
    every check); the page's status once the chain confirmed it."""
    async with ctx.db.sessions() as s:
        key, approval = await _current(s, grant)
    await approvals.submit_approval(ctx, link_principal(key), key.id, signed,
                                    approval_id=approval.id, kind=approval.kind)
    return await status(ctx, grant)


async def renew(ctx: AppContext, grant: LinkGrant) -> dict[str, Any]:
    """A fresh version of a lapsed approval (approvals.renew_approval); the link follows."""
    async with ctx.db.sessions() as s:
        key, approval = await _current(s, grant)
    if _state(ctx, key, approval) != "lapsed":
        raise Conflict("this approval has not lapsed", code="approval_not_renewable")
    await approvals.renew_approval(ctx, link_principal(key), key.id, approval.id, approval.kind)
    return await status(ctx, grant)


async def drip(ctx: AppContext, grant: LinkGrant) -> dict[str, Any]:
    """Local networks only: test funds for the user's wallet — the approval's amount, and
    gas when the approval is a transaction the user pays for."""
    async with ctx.db.sessions() as s:
        key, approval = await _current(s, grant)
    adapter = ctx.chains.get(key.chain)
    if not adapter.network.local:
        raise InvalidRequest("the faucet exists only on local networks", code="faucet_not_local")
    result = await faucet.drip(ctx, link_principal(key), key.user_wallet,
                               format_amount(approval.amount, decimals=key.decimals),
                               key.chain, key.token_symbol)
    native = getattr(adapter, "native_token", None)  # EVM: the gas of the fallback form
    if approval.public.get("format") == "evm_transaction" and native is not None:
        await adapter.faucet(key.user_wallet, native(), _LOCAL_GAS_WEI)
    return result
