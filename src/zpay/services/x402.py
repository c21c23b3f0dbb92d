"""Paying x402-protected resources from a session key.

`create_x402_payment` takes a resource server's payment requirements exactly as the agent
received them, picks the `accepts` entry this key can pay (domain.x402), and runs the very
authorization of `POST /v1/payments` (`payments.authorize_signed` with an x402
`PaymentForm`): the session wallet signs the x402 `exact` payload (the chain adapter's
`sign_x402_exact`), then ONE transaction checks BOTH layers under the key's lock, writes
the audit attempt, and either the refusal or the payment with its hold, its chain transfer
(kind `x402`: reference and validity), the x402 row with the header value, and the
Idempotency-Key binding. The agent gets the header to send.

zpay never sends an x402 transfer: the resource server's facilitator does. Reconciliation
(jobs.reconcile, `x402` settler = `payments.settle`, never re-sent) follows it from the
chain alone: captured once the chain shows it landed, released once it provably never can
(EVM: unused at a block stamped past validBefore). A PAYMENT-RESPONSE the agent reports
(`report_settlement`) only makes zpay look at the chain now; it is never taken on trust.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from sqlalchemy import select

from zpay.chains.protocol import (
    ChainAdapter,
    PreparedTransfer,
    TokenInfo,
    TransferState,
    X402Exact,
    X402Signed,
)
from zpay.chains.registry import get_network
from zpay.domain import x402
from zpay.domain.errors import InvalidRequest, NotFound, PaymentRefused, ZpayError
from zpay.domain.lifecycle import PaymentStatus
from zpay.domain.money import format_amount, parse_amount
from zpay.services import idempotency, payments, rows, transfers
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.requests import Request
from zpay.services.session_keys import load_key, token_of
from zpay.services.views import payment_view, ts
from zpay.store.direct import Executor
from zpay.store.models import ChainTransfer, Payment, SessionKey
from zpay.store.x402_models import X402Payment

log = logging.getLogger(__name__)

KIND = "x402"
# Refusals of a requirement by the adapter's checks before signing (422).
_NOT_SIGNABLE = frozenset({"x402_domain_mismatch", "flow_not_supported", "invalid_address",
                           "x402_fee_payer_invalid", "x402_memo_invalid"})


class X402PaymentRequest(Request):
    """`payment_required`: the v2 PAYMENT-REQUIRED header value (base64 JSON) as received,
    or the JSON object of a 402 body (v1), as received."""

    session_key_id: str
    payment_required: str | dict[str, Any]
    description: str | None = None
    # The caller's own cap for THIS request (token units, e.g. "0.05"): a resource asking
    # more is refused before anything is held or signed.
    max_amount: str | None = None


class X402SettlementReport(Request):
    """The PAYMENT-RESPONSE (v2) or X-PAYMENT-RESPONSE (v1) header value the agent got."""

    payment_response: str


def _x402_view(payment: Payment, key: SessionKey, row: X402Payment | None,
               transfer: ChainTransfer | None, *, with_header: bool) -> dict[str, Any]:
    body = payment_view(payment, key.decimals, key.token_symbol)
    body["object"] = "x402_payment"
    if row is not None:
        body["x402"] = {
            "version": row.x402_version, "network": row.network, "asset": row.asset,
            "pay_to": row.pay_to, "resource_url": row.resource_url,
            "header_name": row.header_name, "reported_tx": row.reported_tx,
            "valid_until": transfer.valid_until if transfer is not None else None,
            "created_at": ts(row.created_at),
        }
        if with_header:
            body["header_name"], body["header_value"] = row.header_name, row.header_value
    return body


async def _load_view(ctx: AppContext, payment_id: str, *, with_header: bool,
                     principal: Principal | None = None) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        payment = await s.get(Payment, payment_id)
        row = await s.get(X402Payment, payment_id)
        if payment is None or row is None or (
                principal is not None and payment.merchant_id != principal.merchant_id):
            raise NotFound(f"no x402 payment {payment_id!r}", code="payment_not_found")
        key = (await load_key(s, principal, payment.session_key_id) if principal is not None
               else await s.get(SessionKey, payment.session_key_id))
        assert key is not None
        transfer = await _transfer_of(s, payment_id)
        return _x402_view(payment, key, row, transfer, with_header=with_header)


async def _transfer_of(s: Any, payment_id: str) -> ChainTransfer | None:
    return (await s.execute(select(ChainTransfer).where(
        ChainTransfer.kind == KIND, ChainTransfer.subject_id == payment_id))).scalar()


async def create_x402_payment(ctx: AppContext, principal: Principal, req: X402PaymentRequest,
                              idempotency_key: str) -> tuple[int, dict[str, Any]]:
    """(status, body): 201 with the header to send, or 200 for an Idempotency-Key replay."""
    required = x402.parse_payment_required(req.payment_required)
    async with ctx.db.sessions() as s:
        key = await load_key(s, principal, req.session_key_id)
        chain, decimals = key.chain, key.decimals
    adapter = ctx.chains.get(chain)
    token = token_of(key, adapter)
    requirement = x402.select(required, networks=get_network(chain).x402_networks,
                              asset=token.address)
    if requirement.amount > token.max_base_units:
        raise x402.X402Invalid("the required amount is out of range for the token")
    if req.max_amount is not None:
        cap = parse_amount(req.max_amount, decimals=decimals, max_base_units=token.max_base_units)
        if requirement.amount > cap:
            raise InvalidRequest(
                "the resource asks more than this request's max_amount; nothing was held",
                code="x402_max_amount_exceeded",
                required_amount=format_amount(requirement.amount, decimals=decimals),
                max_amount=format_amount(cap, decimals=decimals))
    description = req.description or f"x402: {required.resource_url(requirement) or 'resource'}"
    pay = payments.PaymentRequest(
        session_key_id=req.session_key_id,
        amount=format_amount(requirement.amount, decimals=decimals),
        recipient=requirement.pay_to, description=description[:500])
    fingerprint = idempotency.request_fingerprint(
        {"x402": msgspec.structs.asdict(req), "kind": KIND})
    exact = X402Exact(pay_to=requirement.pay_to, asset=requirement.asset,
                      amount_base_units=requirement.amount,
                      validity_s=requirement.validity_s, extra=requirement.extra)
    signed: list[X402Signed] = []
    header: list[tuple[str, str]] = []

    async def prepare(adapter: ChainAdapter, *, secret: bytes, key: SessionKey,
                      token: TokenInfo, recipient: str, amount: int,
                      payment_id: str) -> PreparedTransfer:
        signed.append(await adapter.sign_x402_exact(
            secret=secret, source=key.address, token=token, exact=exact,
            reference_seed=f"{key.id}:{payment_id}"))
        return signed[-1].prepared

    async def recorded(s: Executor, payment: Payment, key: SessionKey,
                       transfer_id: str) -> None:
        header.append(x402.payment_header(required, requirement, signed[-1].payload))
        await rows.insert_row(s, X402Payment, dict(
            id=payment.id, merchant_id=payment.merchant_id, session_key_id=key.id,
            x402_version=required.version, network=requirement.network,
            asset=requirement.asset, pay_to=requirement.pay_to,
            resource_url=(required.resource_url(requirement) or "")[:2000] or None,
            requirement=dict(requirement.raw), header_name=header[-1][0],
            header_value=header[-1][1], reported_tx=None, created_at=payment.created_at,
            updated_at=payment.created_at))

    authorized = await payments.authorize_signed(
        ctx, principal, pay, idempotency_key, fingerprint,
        payments.PaymentForm(kind=KIND, prepare=prepare, recorded=recorded))
    if isinstance(authorized, idempotency.Remembered):
        return 200, await _replay(ctx, principal, authorized)
    if isinstance(authorized, dict):  # failed before it was signed: nothing held
        raise _unsigned(authorized)
    body = await _load_view(ctx, authorized.payment.id, with_header=True, principal=principal)
    return 201, body


def _unsigned(payment: dict[str, Any]) -> ZpayError:
    code = str(payment.get("failure_code") or "chain_error")
    if code in _NOT_SIGNABLE:
        return InvalidRequest(_UNSIGNABLE_MESSAGES.get(code, "zpay cannot sign this payment"),
                              code=code, payment_id=payment["id"])
    if code == "chain_unavailable":
        return ZpayError("the chain could not be reached to sign against; nothing was held",
                         code=code, payment_id=payment["id"])
    return ZpayError("the payment could not be signed; nothing was held", code=code,
                     payment_id=payment["id"])


_UNSIGNABLE_MESSAGES = {
    "x402_domain_mismatch": "the requirement's asset or EIP-712 domain (extra.name/version) "
                            "is not the session key's token",
    "flow_not_supported": "zpay cannot sign this x402 payment on this chain or in this "
                          "transfer method",
    "invalid_address": "payTo is not an address of the session key's chain",
    "x402_fee_payer_invalid": "extra.feePayer is missing or not a fee payer zpay can sign for "
                              "(Solana: the facilitator's, never the session wallet)",
    "x402_memo_invalid": "extra.memo is not a string of at most 256 bytes",
}


async def _replay(ctx: AppContext, principal: Principal,
                  remembered: idempotency.Remembered) -> dict[str, Any]:
    if remembered.payment_id is None:
        refusal = remembered.refusal or {}
        raise PaymentRefused(str(refusal.get("message", "payment refused")),
                             code=str(refusal.get("code", "payment_refused")))
    async with ctx.db.sessions() as s:
        row = await s.get(X402Payment, remembered.payment_id)
        payment = await s.get(Payment, remembered.payment_id)
    if row is None:  # it failed before it was signed: the same answer again
        assert payment is not None
        raise _unsigned({"id": payment.id, "failure_code": payment.failure_code})
    return await _load_view(ctx, remembered.payment_id, with_header=True, principal=principal)


async def get_x402_payment(ctx: AppContext, principal: Principal,
                           payment_id: str) -> dict[str, Any]:
    return await _load_view(ctx, payment_id, with_header=False, principal=principal)


async def report_settlement(ctx: AppContext, principal: Principal, payment_id: str,
                            report: X402SettlementReport) -> tuple[int, dict[str, Any]]:
    """The agent's PAYMENT-RESPONSE: recorded as a claim, then the chain is asked. Captured
    only if the chain shows the transfer landed; 202 while it does not (yet)."""
    claim = x402.parse_settlement_response(report.payment_response)
    await _load_view(ctx, payment_id, with_header=False, principal=principal)  # scoping
    now = ctx.now()
    async with ctx.db.transaction() as s:
        row = (await s.execute(select(X402Payment).where(X402Payment.id == payment_id)
                               .with_for_update())).scalar_one()
        row.reported_tx, row.updated_at = claim.transaction or None, now
        transfer = await _transfer_of(s, payment_id)
    if transfer is not None and transfer.status == transfers.PENDING:
        status = await ctx.chains.get(transfer.chain).transfer_status(
            transfer.reference, valid_until=transfer.valid_until)
        if status.state in (TransferState.CONFIRMED, TransferState.FAILED):
            await payments.settle(ctx, transfer.id, status)
        if (claim.success and claim.transaction and status.tx_id
                and claim.transaction.lower() != status.tx_id.lower()):
            log.warning("x402 payment %s: reported transaction differs from the chain's",
                        payment_id)
    body = await _load_view(ctx, payment_id, with_header=False, principal=principal)
    body["reported"] = {"success": claim.success, "transaction": claim.transaction,
                        "network": claim.network}
    final = body["status"] in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    return (200 if final else 202), body

