"""Payments from a session key: authorize (hold) → sign, record, send → capture or release.

Books follow the chain: the hold and the Idempotency-Key are written in ONE transaction;
the signed transfer is recorded (services.transfers) before it is sent; a payment is
captured when the chain shows its transfer landed and released only when the chain proves
it never can. Anything unanswered within `confirm_timeout_s` is answered `submitted`
(202) and finished by reconciliation, in any process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from zpay.chains.protocol import ChainError, PreparedTransfer, TransferState, TransferStatus
from zpay.domain.errors import Conflict, NotFound, PaymentRefused, ZpayError
from zpay.domain.ledger import KeyLedger
from zpay.domain.lifecycle import KeyStatus, PaymentStatus
from zpay.domain.money import parse_amount
from zpay.domain.policy import KeyState, PolicyState, Reason, authorize
from zpay.domain.windows import with_spend
from zpay.services import books, events, idempotency, rows, transfers
from zpay.services import fields as f
from zpay.services import windows as policy_windows
from zpay.services.auth import Principal
from zpay.services.books import ledger_of
from zpay.services.context import AppContext
from zpay.services.pagination import Page, page_body
from zpay.services.recipients import check_recipient
from zpay.services.requests import Request
from zpay.services.session_keys import key_and_secret_of, key_and_secret_query, load_key, token_of
from zpay.services.sessions import limits_of
from zpay.services.tenancy import can_see_key, session_scope
from zpay.services.views import payment_view, session_key_view
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import (
    Agent,
    ChainTransfer,
    Payment,
    PaymentAttempt,
    PolicySession,
    SessionKey,
)

log = logging.getLogger(__name__)

_KEYS, _POLICIES, _PAYMENTS, _TRANSFERS, _AGENTS = (
    rows.table_of(m) for m in (SessionKey, PolicySession, Payment, ChainTransfer, Agent))
# The hot path's reads, built once: each call only binds values (store.direct).
_LOCK_POLICY = select(_POLICIES).where(_POLICIES.c.id == bindparam("id")).with_for_update()
# A batch's keys (and their policy sessions) locked in ONE statement, in id order: every
# batch, in every process, takes its locks in the same order, so two never deadlock.
_LOCK_KEYS, _LOCK_POLICIES = ({
    dialect: select(table).where(rows.ids_in(table.c.id, dialect)).order_by(table.c.id)
    .with_for_update() for dialect in ("postgresql", "sqlite")} for table in (_KEYS, _POLICIES))
# The same with the records of the Idempotency-Keys the batch uses on each key (PostgreSQL:
# one round trip for both; SQLite's single writer never waits for a lock, two statements).
_LOCK_KEYS_RECALLING = idempotency.locking_and_recalling(_LOCK_KEYS["postgresql"], _KEYS.c.id)
_AGENT_STATUS = select(_AGENTS.c.status).where(_AGENTS.c.id == bindparam("id"))
# A settlement's payments, each with the transfer that names it, locked in id order.
_LOCK_PAYMENTS_OF_TRANSFERS = {
    dialect: select(_PAYMENTS, _TRANSFERS.c.id.label("transfer_id"),
                    _TRANSFERS.c.status.label("transfer_status"),
                    _TRANSFERS.c.reference.label("transfer_reference"))
    .join(_TRANSFERS, _TRANSFERS.c.subject_id == _PAYMENTS.c.id)
    .where(rows.ids_in(_TRANSFERS.c.id, dialect)).order_by(_PAYMENTS.c.id)
    .with_for_update(of=_PAYMENTS) for dialect in ("postgresql", "sqlite")}
# A batch of settlements alone: its keys, payments and transfers locked in ONE statement,
# keys in id order as everywhere. Every row it reads is locked, so each is read as last
# committed even after a wait for a lock (READ COMMITTED re-reads only locked rows).
_KEY_COLUMNS = [column.label(f"key_{column.key}") for column in _KEYS.columns]
_LOCK_SETTLEMENTS = {
    dialect: select(*_KEY_COLUMNS, *(c for c in _LOCK_PAYMENTS_OF_TRANSFERS[dialect]
                                     .selected_columns))
    .select_from(_TRANSFERS.join(_KEYS, _KEYS.c.id == _TRANSFERS.c.session_key_id)
                 .join(_PAYMENTS, _PAYMENTS.c.id == _TRANSFERS.c.subject_id))
    .where(rows.ids_in(_TRANSFERS.c.id, dialect)).order_by(_KEYS.c.id, _PAYMENTS.c.id)
    .with_for_update(of=(_KEYS, _PAYMENTS, _TRANSFERS)) for dialect in ("postgresql", "sqlite")}


class PaymentRequest(Request):
    session_key_id: f.Id
    amount: f.Amount
    recipient: f.Address
    description: f.Description | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """The answer to `POST /v1/payments`: a payment (201 final, 202 in flight) or a
    refusal; `replayed` when an earlier request with the same Idempotency-Key made it."""

    status_code: int
    body: dict[str, Any]
    error: ZpayError | None = None
    replayed: bool = False


@dataclass(frozen=True)
class PaymentForm:
    """How a payment's transfer is signed and recorded. Default: zpay's own transfer
    (`prepare_transfer`), which zpay sends. Another form (x402) signs its own payload with
    `prepare(adapter, secret=, key=, token=, recipient=, amount=, payment_id=)` and adds
    its rows with `recorded(s, payment, key, transfer_id)` in the authorization's very
    transaction; someone else sends it (see `authorize_signed`)."""

    kind: str = "payment"
    prepare: Callable[..., Awaitable[PreparedTransfer]] | None = None
    recorded: Callable[[Executor, Payment, SessionKey, str], Awaitable[None]] | None = None


async def authorize_signed(
    ctx: AppContext, principal: Principal, req: PaymentRequest, idempotency_key: str | None,
    fingerprint: str, form: PaymentForm,
) -> idempotency.Remembered | _Authorized | dict[str, Any]:
    """Step 1 exactly as `create_payment` runs it (both layers, attempt, hold, the signed
    transfer recorded, Idempotency-Key bound: one transaction), for a payment another
    party sends: nothing is sent here. A dict: the payment failed before it was signed."""
    for _ in range(3):
        try:
            return await _authorize(ctx, principal, req, idempotency_key, fingerprint, form)
        except IntegrityError:
            continue  # a concurrent request bound this Idempotency-Key first: read it
    raise Conflict("a request with this Idempotency-Key is in flight",
                   code="idempotency_request_in_flight")


def _view(p: Payment, key: SessionKey) -> dict[str, Any]:
    return payment_view(p, key.decimals, key.token_symbol)


def _answer(body: dict[str, Any], *, replayed: bool = False) -> PaymentOutcome:
    if body["status"] == PaymentStatus.FAILED and body["failure_code"] == "chain_unavailable":
        # Nothing was sent: the chain could not be reached to sign against.
        error = ZpayError("the chain is unavailable; nothing was sent", code="chain_unavailable",
                          payment_id=body["id"])
        return PaymentOutcome(503, body, error, replayed)
    final = body["status"] in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
    return PaymentOutcome(201 if final else 202, body, None, replayed)


async def create_payment(ctx: AppContext, principal: Principal, req: PaymentRequest,
                         idempotency_key: str | None = None) -> PaymentOutcome:
    """Pay from a session key: THE entry point for "authorize a hold for (principal, key,
    amount, recipient, Idempotency-Key)" — the API and the x402 payer call it.

    Two write transactions: authorize (the key's Idempotency-Key bound to the payment,
    the attempt, the hold, the signed transfer — signed BEFORE the lock is taken) and
    settle (capture or release, events). A retry with the same key answers the payment as
    it stands."""
    fingerprint = idempotency.request_fingerprint(msgspec.structs.asdict(req))
    for _ in range(3):
        try:
            authorized = await _authorize(ctx, principal, req, idempotency_key, fingerprint)
            break
        except IntegrityError:
            continue  # a concurrent request bound this Idempotency-Key first: read it
    else:
        raise Conflict("a request with this Idempotency-Key is in flight",
                       code="idempotency_request_in_flight")
    if isinstance(authorized, idempotency.Remembered):
        return await _replay(ctx, principal, authorized)
    if isinstance(authorized, dict):
        return _answer(authorized)  # failed before anything was sent (the chain unreachable)
    try:
        body = await _send_and_settle(ctx, authorized)
    except Exception:
        # The hold and its transfer are written and bound to the key: the payment is
        # answered as it stands and reconciliation settles it from the chain.
        # (Cancellation propagates; the binding makes a retry answer this payment.)
        log.exception("payment %s: unexpected error after authorization",
                      authorized.payment.id)
        body = await _current_view(ctx, authorized.payment.id)
    return _answer(body)


@dataclass(frozen=True)
class _Authorized:
    """A payment whose hold and signed transfer are committed: what is left is to send."""

    payment: Payment
    key: SessionKey
    transfer_id: str
    prepared: PreparedTransfer
    deadline: float  # loop time by which the request answers


async def _replay(ctx: AppContext, principal: Principal,
                  remembered: idempotency.Remembered) -> PaymentOutcome:
    if remembered.payment_id is None:
        refusal = remembered.refusal or {}
        error = PaymentRefused(str(refusal.get("message", "payment refused")),
                               code=str(refusal.get("code", "payment_refused")))
        return PaymentOutcome(402, {}, error, replayed=True)
    async with ctx.db.sessions() as s:
        payment = await s.get(Payment, remembered.payment_id)
        assert payment is not None
        key = await load_key(s, principal, payment.session_key_id)
    return _answer(_view(payment, key), replayed=True)


async def _current_view(ctx: AppContext, payment_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        row = await s.get(Payment, payment_id)
        assert row is not None
        key = await s.get(SessionKey, row.session_key_id)
        assert key is not None
        return _view(row, key)


async def _authorize(
    ctx: AppContext, principal: Principal, req: PaymentRequest, idempotency_key: str | None,
    fingerprint: str, form: PaymentForm = PaymentForm(),
) -> idempotency.Remembered | _Authorized | dict[str, Any]:
    """Sign the transfer; then, in ONE transaction under the key's row lock (and its
    policy session's), read what the Idempotency-Key already did, check both layers and
    write the attempt, and either the refusal or the payment with its hold, its recorded
    transfer and the key's binding. A refusal is committed (audit log, key binding) before
    it is raised; the signed transfer of a refused payment is dropped. Concurrent
    authorizations in this process share that transaction (`_KeyBatches`). A caller who
    can no longer see the key is answered 404, a retry too (as `_replay` answers it)."""
    pending = await _sign(ctx, principal, req, idempotency_key, fingerprint, form)
    return await _batches_of(ctx).authorize(ctx, pending)


@dataclass
class _Pending:
    """An authorization signed and waiting for its key's lock."""

    principal: Principal
    req: PaymentRequest
    idempotency_key: str | None
    fingerprint: str
    form: PaymentForm
    key_id: str
    policy_session_id: str | None
    value: int
    recipient: str
    payment_id: str
    prepared: PreparedTransfer | None  # None: could not be signed (`unsigned_code`)
    unsigned_code: str | None
    deadline: float

    @property
    def scope(self) -> tuple[str, str, str] | None:
        if self.idempotency_key is None:
            return None
        return self.principal.merchant_id, self.principal.scope, self.idempotency_key


async def _sign(
    ctx: AppContext, principal: Principal, req: PaymentRequest, idempotency_key: str | None,
    fingerprint: str, form: PaymentForm,
) -> _Pending:
    """The key and its wallet secret (a read, or this process's copy), then the transfer
    signed. What the Idempotency-Key already did is read with the batch, under the key's
    lock (`_authorize_locked`): a replay costs a signature that is dropped."""
    key, secret = await _signing_key(ctx, principal, req.session_key_id)
    adapter = ctx.chains.get(key.chain)
    token = token_of(key, adapter)
    value = parse_amount(req.amount, decimals=token.decimals,
                         max_base_units=token.max_base_units)
    recipient = adapter.validate_address(req.recipient)
    check_recipient(adapter, session_wallet=key.address, token=token, recipient=recipient)
    payment_id = new_id("pay")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.settings.confirm_timeout_s
    prepared: PreparedTransfer | None = None
    unsigned_code = None
    try:
        async with asyncio.timeout_at(deadline):
            if form.prepare is not None:
                prepared = await form.prepare(adapter, secret=secret, key=key, token=token,
                                              recipient=recipient, amount=value,
                                              payment_id=payment_id)
            else:
                prepared = await adapter.prepare_transfer(
                    secret=secret, source=key.address, destination=recipient, token=token,
                    amount_base_units=value, reference_seed=f"{key.id}:{payment_id}")
    except (ChainError, TimeoutError) as exc:
        # Nothing can be sent: if the payment is allowed it fails at once, without a hold.
        code = exc.code if isinstance(exc, ChainError) else "chain_unavailable"
        unsigned_code = ("chain_unavailable" if code in ("chain_unavailable",
                                                         "confirmation_timeout") else code)
        log.warning("payment %s: could not prepare its transfer (%s)", payment_id,
                    unsigned_code)
    finally:
        del secret
    return _Pending(principal, req, idempotency_key, fingerprint, form, key.id,
                    key.policy_session_id, value, recipient, payment_id, prepared,
                    unsigned_code, deadline)


_SIGNING_ROWS_MAX = 10_000
_SIGNING_ROWS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


async def _signing_key(ctx: AppContext, principal: Principal,
                       key_id: str) -> tuple[SessionKey, bytes]:
    """A key and its opened wallet secret, for signing only. The row read is kept per
    process: what signing uses of it (merchant, agent, wallet, chain, token and the
    sealed secret) never changes, and everything that does (status, balances, expiry,
    the linked policy session) is read again under the key's lock before anything is
    decided. A copy that would refuse the caller is read afresh, so a key linked since
    to the caller's session is never refused for a stale copy."""
    rows_of = _SIGNING_ROWS.setdefault(ctx.db, {})
    row = rows_of.get(key_id)
    if row is not None and row.merchant_id == principal.merchant_id:
        try:
            return key_and_secret_of(ctx, principal, key_id, row)
        except NotFound:
            pass
    statement, values = key_and_secret_query(principal, key_id)
    async with ctx.db.hot_reads() as x:
        row = (await x.execute(statement, values)).first()
    found = key_and_secret_of(ctx, principal, key_id, row)  # NotFound if not the caller's
    if len(rows_of) >= _SIGNING_ROWS_MAX:
        rows_of.clear()
    rows_of[key_id] = row
    return found


_Outcome = _Authorized | dict[str, Any] | idempotency.Remembered | ZpayError
_In = TypeVar("_In")
_M = TypeVar("_M")
_Out = TypeVar("_Out")


@dataclass
class _PolicyBooks:
    """A locked policy session's windows and total as a batch moves them (the keys linked
    to it share them), written once at the end."""

    row: PolicySession
    limits: Any
    totals: Any
    total_committed: int

    def state(self, now: datetime) -> PolicyState:
        return PolicyState(status=self.row.status, expires_at=self.row.expires_at,
                           limits=self.limits, total_committed=self.total_committed,
                           usage=policy_windows.usage(self.limits.windows, self.totals, now))


@dataclass(frozen=True)
class _Settlement:
    """A chain's answer for a payment's transfer, waiting for its key's lock."""

    key_id: str
    transfer_id: str
    status: TransferStatus


async def _turn(ctx: AppContext, batch: list[_Pending | _Settlement]) -> list[_Outcome]:
    """ONE transaction for the work queued meanwhile, of one key or many: the keys locked
    once, in id order; the settlements first (captures and releases booked), then the
    authorizations, each decided in arrival order against what the ones before it left."""
    now = ctx.now()
    settling = [(i, w) for i, w in enumerate(batch) if isinstance(w, _Settlement)]
    authorizing = [(i, w) for i, w in enumerate(batch) if isinstance(w, _Pending)]
    outcomes: dict[int, _Outcome] = {}
    async with ctx.db.hot_transaction() as tx:
        locked_settlements = recalls = None
        if authorizing and ctx.db.dialect == "postgresql":
            keys, recalls = await _lock_keys_recalling(
                tx, {w.key_id for w in batch}, [w for _, w in authorizing])
        elif authorizing:
            keys = await _locked(tx, SessionKey, _LOCK_KEYS, ctx.db.dialect,
                                 {w.key_id for w in batch})
        else:  # one statement fewer for settlements alone (one payment's second step)
            keys, locked_settlements = await _lock_settlements(
                tx, ctx.db.dialect, (w.transfer_id for _, w in settling))
        # Every row the batch writes goes out in ONE statement at the end: nothing reads
        # them back (the keys are kept in step in `keys`, a payment met twice is one
        # instance). A policy session is read by the authorizations, so its rows are
        # written at once while settling, and a settlement that moved its windows (a
        # release, a late capture) goes out before the authorizations read them.
        s = rows.DeferredWrites(tx, updates=(SessionKey, Payment, ChainTransfer))
        if settling:
            views, windows_moved = await _settle_locked(
                s, ctx, keys, [w for _, w in settling], now, locked_settlements)
            outcomes.update(zip((i for i, _ in settling), views, strict=True))
            if windows_moved and authorizing:
                await s.flush()
        if authorizing:
            s.defer_updates(PolicySession)
            decided = await _authorize_locked(s, ctx, keys, [w for _, w in authorizing], now,
                                              recalls)
            outcomes.update(zip((i for i, _ in authorizing), decided, strict=True))
        await s.flush()
    return [outcomes[i] for i in range(len(batch))]


async def _authorize_locked(s: rows.DeferredWrites, ctx: AppContext,
                            keys: dict[str, SessionKey], batch: list[_Pending], now: datetime,
                            recalls: dict[idempotency.Scope, Any] | None = None
                            ) -> list[_Outcome]:
    """Authorizations of locked keys: their policy sessions locked once, in id order; each
    decided in arrival order against the balance and windows the ones before it left;
    every row written (by `s`, at the caller's flush), each key's and each policy's totals
    once. What their Idempotency-Keys already did is read here unless the caller read it
    with the keys (`recalls`)."""
    outcomes: dict[int, _Outcome] = {}
    by_key: dict[str, list[int]] = {}
    for i, p in enumerate(batch):
        by_key.setdefault(p.key_id, []).append(i)
    policies: dict[str, _PolicyBooks] = {}
    for policy_row in (await _locked(
            s, PolicySession, _LOCK_POLICIES, ctx.db.dialect,
            {linked for k in by_key
             if (linked := keys[k].policy_session_id) is not None})).values():
        limits = limits_of(policy_row)
        policies[policy_row.id] = _PolicyBooks(
            policy_row, limits, await policy_windows.moved(s, policy_row, limits.windows, now),
            policy_row.total_committed)
    if recalls is None:
        recalls = await idempotency.recall_many(
            s, ctx.db.dialect, (p.scope for p in batch if p.scope is not None))
    for key_id, indexes in by_key.items():
        key = keys[key_id]
        policy = policies.get(key.policy_session_id or "")
        for i, outcome in zip(indexes, await _authorize_key(
                s, ctx, key, policy, [batch[i] for i in indexes], recalls, now), strict=True):
            outcomes[i] = outcome
    for policy in policies.values():
        if policy.total_committed != policy.row.total_committed:
            await rows.update_row(s, PolicySession, policy.row.id, dict(
                total_committed=policy.total_committed,
                **policy_windows.values(policy.totals)))
    return [outcomes[i] for i in range(len(batch))]


async def _authorize_key(s: Executor, ctx: AppContext, key: SessionKey,
                         policy: _PolicyBooks | None, batch: list[_Pending],
                         recalls: dict[idempotency.Scope, Any],
                         now: datetime) -> list[_Outcome]:
    """A batch's authorizations of one locked key, in arrival order; the key's books are
    written here, its policy's (moved in `policy`) by the caller. An Idempotency-Key
    already used answers what it did (`recalls`: the batch's records, read before)."""
    outcomes: list[_Outcome] = []
    ledger = ledger_of(key)
    agent_active: bool | None = None
    for p in batch:
        replace_expired = False
        if p.scope is not None:
            try:
                lookup = idempotency.recalled_record(recalls.get(p.scope), p.fingerprint, now)
            except ZpayError as exc:  # the key was used with another body
                outcomes.append(exc)
                continue
            if lookup.remembered is not None:
                outcomes.append(lookup.remembered)
                continue
            replace_expired = lookup.expired
        if not can_see_key(key, p.principal):  # unlinked from the caller's session
            outcomes.append(NotFound(f"no session key {key.id!r}",
                                     code="session_key_not_found"))
            continue
        state = KeyState(status=key.status, expires_at=key.expires_at,
                         funded=ledger.funded, spent=ledger.spent, held=ledger.held,
                         refunded=ledger.refunded)
        decision = authorize(p.value, key=state,
                             policy=policy.state(now) if policy is not None else None,
                             recipient=p.recipient, chain=key.chain, now=now)
        refusal = None if decision.allowed else decision.reason
        # An agent's own token was just checked active; a merchant paying for an
        # agent's key needs the agent looked up (once per key and batch).
        if refusal is None and key.agent_id is not None and (
                p.principal.agent_id != key.agent_id):
            if agent_active is None:
                agent_active = (await s.execute(
                    _AGENT_STATUS, {"id": key.agent_id})).scalar() == "active"
            if not agent_active:
                refusal = Reason.AGENT_FROZEN
        await rows.insert_row(s, PaymentAttempt, dict(
            id=new_id("att"), merchant_id=key.merchant_id, session_key_id=key.id,
            agent_id=p.principal.agent_id, amount=p.value, recipient=p.recipient,
            allowed=refusal is None, reason=refusal or Reason.APPROVED,
            payment_id=None if refusal is not None else p.payment_id, created_at=now))
        if refusal is not None:
            if p.idempotency_key is not None:
                await idempotency.remember(
                    s, ctx, p.principal, p.idempotency_key, p.fingerprint,
                    refusal={"code": refusal, "message": _refusal_message(refusal)},
                    replace_expired=replace_expired)
            outcomes.append(PaymentRefused(_refusal_message(refusal), code=refusal))
            continue
        columns = dict(
            id=p.payment_id, merchant_id=key.merchant_id, session_key_id=key.id,
            agent_id=p.principal.agent_id, policy_session_id=key.policy_session_id,
            chain=key.chain, amount=p.value, recipient=p.recipient,
            description=p.req.description,
            status=(PaymentStatus.SUBMITTED if p.prepared is not None
                    else PaymentStatus.FAILED).value,
            tx_reference=p.prepared.reference if p.prepared is not None else None,
            tx_id=None, failure_code=p.unsigned_code, idempotency_key=p.idempotency_key,
            created_at=now, updated_at=now)
        await rows.insert_row(s, Payment, columns)
        payment = rows.transient(Payment, columns)  # not the ORM's constructor: ~20x cheaper
        if p.prepared is not None:
            ledger = ledger.hold(p.value)
            if policy is not None:
                policy.totals = with_spend(policy.totals, p.value, now)
                policy.total_committed += p.value
            transfer_id = await transfers.insert(
                s, key=key, kind=p.form.kind, subject_id=p.payment_id,
                prepared=p.prepared, amount=p.value, now=now)
            if p.form.recorded is not None:
                await p.form.recorded(s, payment, key, transfer_id)
            outcomes.append(_Authorized(payment, key, transfer_id, p.prepared, p.deadline))
        else:
            await events.write(s, merchant_id=payment.merchant_id, type="payment.failed",
                               object_type="payment", object_id=payment.id,
                               data=_view(payment, key), now=now)
            outcomes.append(_view(payment, key))
        if p.idempotency_key is not None:
            await idempotency.remember(s, ctx, p.principal, p.idempotency_key,
                                       p.fingerprint, payment_id=p.payment_id,
                                       replace_expired=replace_expired)
    if ledger != ledger_of(key):
        await books.write(s, key, ledger, last_activity_at=now, updated_at=now)
    return outcomes


async def _locked(s: Executor, model: type[_M], statement: dict[str, Any], dialect: str,
                  ids: Iterable[str]) -> dict[str, _M]:
    """Rows by id under their locks (taken in id order), as transient copies: the hot path
    writes with single statements (books.write), never through the ORM's unit of work."""
    wanted = sorted(ids)
    if not wanted:
        return {}
    found = (await s.execute(statement[dialect], {"ids": wanted})).all()
    return {row.id: rows.transient(model, row._mapping) for row in found}


class _Coalescer(Generic[_In, _Out]):
    """Coalescing in this process. Work starts at once while fewer than `max_running`
    transactions run; beyond that it queues, and the next transaction takes what has
    queued (up to `MAX_BATCH`), in arrival order — of one key or many, so a burst costs
    the database a few transactions, not one per payment. A key, a policy session and an
    Idempotency-Key are in at most one running transaction of this process, so their work
    is decided in arrival order without waiting on a lock this process holds. Between
    processes the rows' locks serialize the transactions, so every decision stays exact
    everywhere.

    One transaction at a time (`ZPAY_HOT_PATH_TRANSACTIONS`, default 1) makes the largest
    batches: under load a payment then cost the process 20-40% less CPU, and PostgreSQL
    40-55% less, than with four at once (benchmarks/hot_path.py); several processes
    (`zpay serve --workers N`) bring the concurrency."""

    MAX_BATCH = 64

    def __init__(self, run: Callable[[AppContext, list[_In]], Awaitable[list[_Out]]],
                 rows_of: Callable[[_In], Iterable[str | None]],
                 conflict: Callable[[_In], Any] = lambda _item: None,
                 max_running: int = 1) -> None:
        self._run_batch, self._rows_of, self._conflict = run, rows_of, conflict
        self.max_running = max_running
        self._queue: list[tuple[_In, asyncio.Future[_Out]]] = []
        self._busy: set[Any] = set()  # the rows and conflicts of running transactions
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, ctx: AppContext, item: _In) -> _Out:
        future: asyncio.Future[_Out] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # also when the request itself is gone
        self._queue.append((item, future))
        self._start(ctx)
        # Shielded: a cancelled request's work may already be committing with its batch
        # (its Idempotency-Key then answers it; reconciliation finishes what it left).
        return await asyncio.shield(future)

    def _start(self, ctx: AppContext) -> None:
        while len(self._running) < self.max_running and self._queue:
            batch, claims = self._take()
            if not batch:
                return
            self._busy |= claims
            task = asyncio.create_task(self._run_claimed(ctx, batch, claims))
            self._running.add(task)

    def _take(self) -> tuple[list[tuple[_In, asyncio.Future[_Out]]], set[Any]]:
        """The next batch: queued work whose rows (key, policy session) and Idempotency-Key
        no running transaction holds, one use of an Idempotency-Key per batch (a second
        use then conflicts and is answered from the first), in arrival order."""
        batch: list[tuple[_In, asyncio.Future[_Out]]] = []
        left: list[tuple[_In, asyncio.Future[_Out]]] = []
        claims: set[Any] = set()
        for entry in self._queue:
            locked = {row for row in self._rows_of(entry[0]) if row is not None}
            conflict = self._conflict(entry[0])
            if (len(batch) == self.MAX_BATCH or not locked.isdisjoint(self._busy)
                    or (conflict is not None and (conflict in claims or conflict in self._busy))):
                left.append(entry)
                continue
            claims |= locked
            if conflict is not None:
                claims.add(conflict)
            batch.append(entry)
        self._queue[:] = left
        return batch, claims

    async def _run_claimed(self, ctx: AppContext, batch: list[tuple[_In, asyncio.Future[_Out]]],
                           claims: set[Any]) -> None:
        try:
            await self._run(ctx, batch)
        except BaseException:
            # Cancelled: the server stops, and nothing queued will be taken any more.
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(ZpayError("the server is stopping; retry",
                                                   code="service_unavailable"))
            self._queue.clear()
            raise
        finally:
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._busy -= claims
        self._start(ctx)

    async def _run(self, ctx: AppContext, batch: list[tuple[_In, asyncio.Future[_Out]]]) -> None:
        try:
            outcomes = await self._run_batch(ctx, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and _one_by_one(exc):
                for item in batch:
                    await self._run(ctx, [item])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the server stops): nobody waits forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(ZpayError("the server is stopping; retry",
                                                   code="service_unavailable"))
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


def _one_by_one(exc: Exception) -> bool:
    """A batch's failure that its items may not share: an Idempotency-Key bound meanwhile
    by another process (IntegrityError), or a deadlock PostgreSQL broke by aborting this
    transaction (another path took a key's and its policy's locks the other way round)."""
    if isinstance(exc, IntegrityError):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == "40P01"


@dataclass
class _KeyBatches:
    """The coalescer of one database in this process: authorizations and settlements
    share its transactions (`_turn`)."""

    turns: _Coalescer[_Pending | _Settlement, _Outcome]

    async def authorize(self, ctx: AppContext, pending: _Pending
                        ) -> _Authorized | dict[str, Any] | idempotency.Remembered:
        outcome = await self.turns.submit(ctx, pending)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def settle(self, ctx: AppContext, settlement: _Settlement) -> dict[str, Any]:
        view = await self.turns.submit(ctx, settlement)
        assert isinstance(view, dict)
        return view


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


_BATCHES: weakref.WeakKeyDictionary[Any, _KeyBatches] = weakref.WeakKeyDictionary()


def _batches_of(ctx: AppContext) -> _KeyBatches:
    """One coalescer per database per process (the key's row lock guards between them)."""
    batches = _BATCHES.get(ctx.db)
    if batches is None:
        batches = _BATCHES[ctx.db] = _KeyBatches(_Coalescer(
            _turn, lambda work: ((work.key_id, work.policy_session_id)
                                 if isinstance(work, _Pending) else (work.key_id,)),
            lambda work: work.scope if isinstance(work, _Pending) else None,
            ctx.settings.hot_path_transactions))
    return batches


def _refusal_message(reason: str) -> str:
    return {
        Reason.INSUFFICIENT_BALANCE: "the session key's remaining balance is too low",
        Reason.PER_TRANSACTION: "the amount exceeds the session's per-transaction limit",
        Reason.DAILY: "the amount exceeds what the session allows today",
        Reason.WEEKLY: "the amount exceeds what the session allows this week",
        Reason.MONTHLY: "the amount exceeds what the session allows this month",
        Reason.TOTAL: "the amount exceeds the session's total limit",
    }.get(reason, f"payment refused: {reason.replace('_', ' ')}")


async def _send_and_settle(ctx: AppContext, authorized: _Authorized) -> dict[str, Any]:
    adapter = ctx.chains.get(authorized.key.chain)
    remaining = max(authorized.deadline - asyncio.get_running_loop().time(), 0)
    status = await transfers.send_and_wait(adapter, authorized.prepared, remaining)
    return await _batches_of(ctx).settle(
        ctx, _Settlement(authorized.key.id, authorized.transfer_id, status))


async def _lock_policy(s: Executor, policy_session_id: str | None) -> PolicySession | None:
    """The policy session's row under its lock, as a transient copy (see `_locked`)."""
    if policy_session_id is None:
        return None
    row = (await s.execute(_LOCK_POLICY, {"id": policy_session_id})).one()
    return rows.transient(PolicySession, row._mapping)


async def _release(s: Executor, key: SessionKey, ledger: KeyLedger, payment: Payment,
                   code: str, now: datetime) -> KeyLedger:
    """Its transfer can never land: the hold goes back (in the returned ledger, which the
    caller books), and the policy's windows and total stop counting it (under the key's
    lock; the policy's is taken here)."""
    ledger = ledger.release(payment.amount)
    if payment.policy_session_id is not None:
        await _lock_policy(s, payment.policy_session_id)
        await policy_windows.book_payment(s, payment.policy_session_id, -payment.amount,
                                          payment.created_at)
    payment.status, payment.failure_code, payment.updated_at = (
        PaymentStatus.FAILED.value, code, now)
    await rows.update_row(s, Payment, payment.id, dict(
        status=payment.status, failure_code=code, updated_at=now))
    await events.write(s, merchant_id=payment.merchant_id, type="payment.failed",
                       object_type="payment", object_id=payment.id, data=_view(payment, key),
                       now=now)
    return ledger


async def _capture(s: Executor, key: SessionKey, ledger: KeyLedger, payment: Payment,
                   tx_id: str | None, now: datetime) -> KeyLedger:
    if payment.status == PaymentStatus.FAILED:
        # Released, yet its transfer landed after all: the chain is the truth.
        log.error("payment %s was released but its transfer landed; capturing it late",
                  payment.id)
        ledger = ledger.late_capture(payment.amount)
        if payment.policy_session_id is not None:
            await _lock_policy(s, payment.policy_session_id)
            await policy_windows.book_payment(s, payment.policy_session_id, payment.amount,
                                              payment.created_at)
        payment.failure_code = None
    else:
        ledger = ledger.capture(payment.amount)
    payment.status, payment.tx_id, payment.updated_at = PaymentStatus.SUCCEEDED.value, tx_id, now
    await rows.update_row(s, Payment, payment.id, dict(
        status=payment.status, tx_id=tx_id, failure_code=payment.failure_code,
        updated_at=now))
    await events.write(s, merchant_id=payment.merchant_id, type="payment.succeeded",
                       object_type="payment", object_id=payment.id, data=_view(payment, key),
                       now=now)
    return ledger


async def _book_settled(s: Executor, key: SessionKey, ledger: KeyLedger, captured: int,
                        now: datetime) -> None:
    """Write the key once for every settlement of its transaction."""
    exhausted = (key.status == KeyStatus.ACTIVE and ledger.remaining == 0
                 and ledger.held == 0)
    await books.write(s, key, ledger, transaction_count=key.transaction_count + captured,
                      updated_at=now,
                      status=KeyStatus.EXHAUSTED.value if exhausted else key.status)
    if exhausted:
        await events.write(s, merchant_id=key.merchant_id, type="session_key.exhausted",
                           object_type="session_key", object_id=key.id,
                           data=session_key_view(key), now=now)


def _failure_code(payment_id: str, status: TransferStatus) -> str:
    """A stable code for `failure_code`: zpay's own codes pass through; an adapter's prose
    (what the chain said) goes to the log and the payment says `transfer_failed`."""
    if status.error and _CODE.fullmatch(status.error):
        return status.error
    log.warning("payment %s failed on chain: %s", payment_id, status.error)
    return "transfer_failed"


_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass
class _Settling:
    """A transfer being settled and its payment (one instance per payment in a batch, so
    what the batch does to a payment, its next transfer sees)."""

    payment: Payment
    reference: str
    pending: bool  # not yet concluded, as read under the key's lock (or by this batch)


async def _locked_payments_of(s: Executor, dialect: str,
                              transfer_ids: Iterable[str]) -> dict[str, _Settling]:
    """Transfers' payments under their row locks (their keys' are taken first), by transfer
    id, as transient copies (written with single statements)."""
    found = (await s.execute(_LOCK_PAYMENTS_OF_TRANSFERS[dialect],
                             {"ids": sorted(set(transfer_ids))})).all()
    return _settling_of(found)


async def _lock_keys_recalling(s: Executor, key_ids: Iterable[str], batch: list[_Pending]
                               ) -> tuple[dict[str, SessionKey], dict[idempotency.Scope, Any]]:
    """The batch's keys under their locks (id order) and what its Idempotency-Keys already
    did, in one statement (PostgreSQL; see `idempotency.locking_and_recalling`)."""
    found = (await s.execute(_LOCK_KEYS_RECALLING, {
        "ids": sorted(set(key_ids)), **idempotency.recall_params(
            (p.scope, p.key_id) for p in batch if p.scope is not None)})).all()
    recalls = dict(recalled for row in found
                   if (recalled := idempotency.recalled_on(row._mapping)) is not None)
    return _keys_of(found), recalls


async def _lock_settlements(s: Executor, dialect: str, transfer_ids: Iterable[str]
                            ) -> tuple[dict[str, SessionKey], dict[str, _Settling]]:
    """Transfers' keys and payments under their row locks, in one statement (see
    `_LOCK_SETTLEMENTS`): the keys by id, the payments by transfer id."""
    found = (await s.execute(_LOCK_SETTLEMENTS[dialect],
                             {"ids": sorted(set(transfer_ids))})).all()
    return _keys_of(found, "key_"), _settling_of(found)


def _keys_of(found: Iterable[Any], prefix: str = "") -> dict[str, SessionKey]:
    """The session keys in rows of a locking read (their columns named `prefix` + name),
    by id, as transient copies; each once however many rows name it."""
    keys: dict[str, SessionKey] = {}
    for row in found:
        columns = row._mapping
        if columns[f"{prefix}id"] not in keys:
            keys[columns[f"{prefix}id"]] = rows.transient(SessionKey, {
                column.key: columns[f"{prefix}{column.key}"] for column in _KEYS.columns})
    return keys


def _settling_of(found: Iterable[Any]) -> dict[str, _Settling]:
    """Locked rows of payments with their transfers, by transfer id (one instance per
    payment)."""
    payments: dict[str, Payment] = {}
    by_transfer = {}
    for row in found:
        columns = row._mapping
        payment = payments.get(columns["id"])
        if payment is None:
            payment = payments[columns["id"]] = rows.transient(
                Payment, {c.key: columns[c.key] for c in _PAYMENTS.columns})
        by_transfer[columns["transfer_id"]] = _Settling(
            payment, columns["transfer_reference"],
            columns["transfer_status"] == transfers.PENDING)
    return by_transfer


async def settle(ctx: AppContext, transfer_id: str, status: TransferStatus) -> dict[str, Any]:
    """Step 3, from the chain's answer for the payment's recorded transfer: confirmed →
    capture (late, if it had been released); failed (provably never lands) → release;
    anything else → left for reconciliation. Idempotent: a transfer already concluded
    leaves the payment as it is."""
    async with ctx.db.sessions() as s:
        key_id = (await s.execute(select(ChainTransfer.session_key_id).where(
            ChainTransfer.id == transfer_id))).scalar_one()
    return (await _settle_batch(ctx, [(key_id, transfer_id, status)]))[0]


async def _settle_batch(ctx: AppContext,
                        batch: list[tuple[str, str, TransferStatus]]) -> list[dict[str, Any]]:
    """Settle (key id, transfer id, chain answer)s in one transaction (see `_turn`)."""
    views = await _turn(ctx, [_Settlement(*settlement) for settlement in batch])
    return [view for view in views if isinstance(view, dict)]


async def _settle_locked(s: rows.DeferredWrites, ctx: AppContext,
                         keys: dict[str, SessionKey], batch: list[_Settlement], now: datetime,
                         settling: dict[str, _Settling] | None = None
                         ) -> tuple[list[dict[str, Any]], bool]:
    """Settlements of locked keys (the payment hot path's second step): each payment
    captured or released in order, each key written once (and kept in step in `keys`, for
    the authorizations that follow in the same transaction), by `s` at the caller's flush.
    Their payments are locked here unless the caller locked them with the keys
    (`settling`). Also answers whether a policy session's windows moved (a release or a
    late capture: written at once, the payment's status with the caller's flush)."""
    views = []
    windows_moved = False
    if settling is None:
        settling = await _locked_payments_of(s, ctx.db.dialect,
                                             (w.transfer_id for w in batch))
    settled_keys = {w.key_id for w in batch}
    ledgers = {key_id: ledger_of(keys[key_id]) for key_id in settled_keys}
    captured = dict.fromkeys(settled_keys, 0)
    for work in batch:
        key_id, transfer_id, status = work.key_id, work.transfer_id, work.status
        key, transfer = keys[key_id], settling[transfer_id]
        payment = transfer.payment
        code = (_failure_code(payment.id, status) if status.state is TransferState.FAILED
                else None)
        if transfer.pending and status.state in (TransferState.CONFIRMED,
                                                 TransferState.FAILED):
            transfer.pending = False
            tx_id = await transfers.conclude_locked(s, transfer_id, transfer.reference,
                                                    status, code, now)
            if (status.state is TransferState.CONFIRMED
                    and payment.status != PaymentStatus.SUCCEEDED):
                windows_moved |= (payment.status == PaymentStatus.FAILED
                                  and payment.policy_session_id is not None)
                ledgers[key_id] = await _capture(s, key, ledgers[key_id], payment, tx_id, now)
                captured[key_id] += 1
            elif (status.state is TransferState.FAILED
                    and payment.status == PaymentStatus.SUBMITTED):
                assert code is not None
                windows_moved |= payment.policy_session_id is not None
                ledgers[key_id] = await _release(s, key, ledgers[key_id], payment, code, now)
        views.append(_view(payment, key))
    for key_id in settled_keys:
        key = keys[key_id]
        if captured[key_id] or ledgers[key_id] != ledger_of(key):
            await _book_settled(s, key, ledgers[key_id], captured[key_id], now)
    return views, windows_moved


async def release_unsent(ctx: AppContext, payment_id: str, code: str) -> dict[str, Any]:
    """Release a payment that is still `authorized` (written by a version that recorded
    the transfer after the hold): no transfer of it was recorded, so none was sent, and
    nothing is sent for a payment no longer `authorized` (checked under the same locks)."""
    now = ctx.now()
    async with ctx.db.transaction() as s:
        key_row = (await s.execute(select(SessionKey.__table__).where(
            SessionKey.id == select(Payment.session_key_id).where(Payment.id == payment_id)
            .scalar_subquery()).with_for_update())).one()
        key = SessionKey(**key_row._mapping)
        payment_row = (await s.execute(select(Payment.__table__).where(
            Payment.id == payment_id).with_for_update())).one()
        payment = Payment(**payment_row._mapping)
        if payment.status == PaymentStatus.AUTHORIZED:
            await _book_settled(s, key, await _release(s, key, ledger_of(key), payment, code,
                                                       now), 0, now)
        return _view(payment, key)


async def get_payment(ctx: AppContext, principal: Principal, payment_id: str) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        payment = await s.get(Payment, payment_id)
        key = await s.get(SessionKey, payment.session_key_id) if payment is not None else None
        if payment is None or key is None or not can_see_key(key, principal):
            # Another merchant's, agent's or session's payment is the same 404 as an unknown one.
            raise NotFound(f"no payment {payment_id!r}", code="payment_not_found")
    return _view(payment, key)


async def list_payments(ctx: AppContext, principal: Principal, page: Page,
                        session_key_id: str | None = None) -> dict[str, Any]:
    async with ctx.db.sessions() as s:
        stmt = (select(Payment, SessionKey).join(SessionKey,
                                                 SessionKey.id == Payment.session_key_id)
                .where(Payment.merchant_id == principal.merchant_id))
        if principal.agent_id is not None:
            stmt = stmt.where(SessionKey.agent_id == principal.agent_id)
        stmt = stmt.where(*session_scope(SessionKey, principal))
        if session_key_id is not None:
            stmt = stmt.where(Payment.session_key_id == session_key_id)
        rows = (await s.execute(page.apply(stmt, Payment.id))).all()
    return page_body(rows, page, lambda r: _view(r[0], r[1]))
