"""Idempotency-Key semantics (IETF draft), bound to the money.

The record is written in the SAME transaction as the payment's hold (or its refusal), so it
can never say less than the books: a request that died before that commit left nothing and
a retry runs afresh; one that committed is answered from the payment as it stands now,
whatever happened to the process that made it (crash, cancellation, timeout). Same key +
other body → 422 (amounts compared by value: "0.02" is "0.020000"). Scoped per principal
(`Principal.scope`: an agent, a session token, or the merchant acting as itself — as
Stripe scopes keys per account), so one agent can neither read nor spoil another's keys.
Kept for `idempotency_ttl_s` (24 h by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from zpay.domain.errors import InvalidRequest, ZpayError
from zpay.domain.money import canonical_amount
from zpay.services.auth import Principal
from zpay.services.context import AppContext
from zpay.services.rows import ids_in, insert_row
from zpay.store.direct import Executor
from zpay.store.ids import new_id
from zpay.store.models import IdempotencyRecord

_RECORDS = IdempotencyRecord.__table__


@dataclass(frozen=True)
class Remembered:
    """What a key was used for: a payment (answer it as it stands) or a refusal."""

    payment_id: str | None
    refusal: dict[str, Any] | None


def validate_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise InvalidRequest("the Idempotency-Key header is required for payments",
                             code="idempotency_key_missing")
    if len(key) > 255 or not key.isprintable():
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable characters",
                             code="idempotency_key_invalid")
    return key


def request_fingerprint(body: dict[str, Any]) -> str:
    """The request as compared under one key: equal amounts spelled differently are equal."""
    if "amount" in body:
        body = {**body, "amount": canonical_amount(body["amount"])}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


@dataclass(frozen=True)
class Lookup:
    """What a key already did for its principal (None: nothing yet); `expired`: a record
    past its time is in the way and goes when the key is bound again."""

    remembered: Remembered | None
    expired: bool = False


# Many principals' keys in one read (a coalesced batch of payments), each triple one probe
# of the (merchant, principal, key) unique index, whatever the merchant's history: on
# PostgreSQL the triples are joined from arrays (`= ANY` on each column let its planner
# scan every record of the merchant and filter); SQLite's IN on each column searches the
# index on all three.
_RECALLED = (_RECORDS.c.merchant_id, _RECORDS.c.principal, _RECORDS.c.key,
             _RECORDS.c.request_hash, _RECORDS.c.payment_id, _RECORDS.c.response_body,
             _RECORDS.c.expires_at)
_TRIPLE = (("merchants", _RECORDS.c.merchant_id), ("principals", _RECORDS.c.principal),
           ("keys", _RECORDS.c.key))


def _recalled_from(*extra: tuple[str, Any]) -> Select[Any]:
    """The records of the triples bound as arrays (and, per triple, the `extra` arrays'
    values as columns): PostgreSQL."""
    wanted = func.unnest(*(bindparam(name, type_=ARRAY(column.type))
                           for name, column in (*_TRIPLE, *extra))).table_valued(
        "merchant_id", "principal", "key", *(name for name, _ in extra)).render_derived(
        name="wanted")
    return select(*(wanted.c[name] for name, _ in extra), *_RECALLED).join_from(
        wanted, _RECORDS, and_(_RECORDS.c.merchant_id == wanted.c.merchant_id,
                               _RECORDS.c.principal == wanted.c.principal,
                               _RECORDS.c.key == wanted.c.key))


_RECALL_MANY = {
    "postgresql": _recalled_from(),
    "sqlite": select(*_RECALLED).where(ids_in(_RECORDS.c.merchant_id, "sqlite", "merchants"),
                                       ids_in(_RECORDS.c.principal, "sqlite", "principals"),
                                       ids_in(_RECORDS.c.key, "sqlite", "keys")),
}

Scope = tuple[str, str, str]  # (merchant id, principal scope, Idempotency-Key)


def locking_and_recalling(locking: Select[Any], rows_id: Any) -> Select[Any]:
    """`locking` (a PostgreSQL `SELECT … FOR UPDATE` of rows by id, e.g. a batch's session
    keys) with, on each row, the records of the Idempotency-Keys used on it
    (`recall_params`; absent: never used), columns `idem_*`: the lock and the recall in
    one round trip. Only the locked rows are read as last committed after a wait for
    their lock; a record bound meanwhile by another process is not seen, and the unique
    (merchant, principal, key) index refuses that payment's own binding
    (`remember`), as it refuses two concurrent first uses."""
    recalled = _recalled_from(("used_on", rows_id)).subquery("recalled")
    [locked] = locking.get_final_froms()
    return locking.add_columns(*(recalled.c[c.key].label(f"idem_{c.key}") for c in _RECALLED)
                               ).select_from(locked.outerjoin(
                                   recalled, recalled.c.used_on == rows_id)
                               ).with_for_update(of=locked)


def recall_params(used: Iterable[tuple[Scope, str]]) -> dict[str, list[str]]:
    """The values of `locking_and_recalling` for (scope, locked row id)s."""
    ordered = sorted(used)
    return {"merchants": [m for (m, _, _), _ in ordered],
            "principals": [p for (_, p, _), _ in ordered],
            "keys": [k for (_, _, k), _ in ordered], "used_on": [i for _, i in ordered]}


@dataclass(frozen=True)
class _Recalled:
    request_hash: str
    payment_id: str | None
    response_body: str | None
    expires_at: datetime


def recalled_on(columns: Any) -> tuple[Scope, Any] | None:
    """A row of `locking_and_recalling`'s record as `recall_many` gives it (None: no
    record on this row)."""
    if columns["idem_merchant_id"] is None:
        return None
    return ((columns["idem_merchant_id"], columns["idem_principal"], columns["idem_key"]),
            _Recalled(columns["idem_request_hash"], columns["idem_payment_id"],
                      columns["idem_response_body"], columns["idem_expires_at"]))


async def recall_many(s: Executor, dialect: str, scopes: Iterable[Scope]) -> dict[Scope, Any]:
    """What these keys already did: one indexed read (unlocked) for a whole batch;
    `recalled_record` answers each from its row (absent: never used). Another body under
    the same key is refused there. Binding happens in the payment's transaction
    (`remember`), whose unique key decides between two concurrent first uses."""
    wanted = set(scopes)
    if not wanted:
        return {}
    triples = sorted(wanted)
    found = (await s.execute(_RECALL_MANY[dialect], {
        "merchants": [m for m, _, _ in triples], "principals": [p for _, p, _ in triples],
        "keys": [k for _, _, k in triples]})).all()
    return {scope: row for row in found
            if (scope := (row.merchant_id, row.principal, row.key)) in wanted}


def recalled_record(row: Any, fingerprint: str, now: datetime) -> Lookup:
    """A key's answer from its row of `recall_many` (None: the key was never used)."""
    if row is None:
        return Lookup(None)
    return _lookup(row.request_hash, row.payment_id, row.response_body, row.expires_at,
                   fingerprint, now)


def _lookup(request_hash: str | None, payment_id: str | None, response_body: str | None,
            expires_at: datetime | None, fingerprint: str, now: datetime) -> Lookup:
    if request_hash is None or expires_at is None:
        return Lookup(None)
    if expires_at <= now:
        return Lookup(None, expired=True)
    if request_hash != fingerprint:
        raise ZpayError("this Idempotency-Key was used with another request body",
                        code="idempotency_key_reused")
    refusal = json.loads(response_body) if response_body else None
    return Lookup(Remembered(payment_id, refusal))


async def remember(s: Executor, ctx: AppContext, principal: Principal, key: str,
                   fingerprint: str, *, payment_id: str | None = None,
                   refusal: dict[str, Any] | None = None, replace_expired: bool = False) -> None:
    """Bind the key, in the caller's transaction, to its payment or its refusal. A
    concurrent request with the same key fails this insert and, retried, reads what the
    winner wrote."""
    now = ctx.now()
    if replace_expired:
        await s.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.merchant_id == principal.merchant_id,
            IdempotencyRecord.principal == principal.scope, IdempotencyRecord.key == key,
            IdempotencyRecord.expires_at <= now))
    await insert_row(s, IdempotencyRecord, dict(
        id=new_id("idem"), merchant_id=principal.merchant_id, principal=principal.scope,
        key=key, request_hash=fingerprint, status="completed", payment_id=payment_id,
        response_status=None if refusal is None else 402,
        response_body=None if refusal is None else json.dumps(refusal), created_at=now,
        expires_at=now + timedelta(seconds=ctx.settings.idempotency_ttl_s)))


async def purge_expired(ctx: AppContext, limit: int = 1000) -> int:
    async with ctx.db.transaction() as s:
        ids = (await s.execute(select(IdempotencyRecord.id).where(
            IdempotencyRecord.expires_at <= ctx.now()).limit(limit))).scalars().all()
        if ids:
            await s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(ids)))
    return len(ids)
