"""Credential changes, announced: what lets a process remember authenticated tokens.

A token stops being valid only through a change to its row — an agent frozen, deleted or
given a new token; an API key revoked or rolled; a policy session revoked or expired —
and those columns change only through the ORM (the payment hot path's Core statements
never touch them). So any flush that updates or deletes an `Agent`, `ApiKey` or
`PolicySession` marks its transaction: on PostgreSQL it sends `NOTIFY zpay_credentials`
inside that very transaction (PostgreSQL delivers it at commit, to every process that
LISTENs), and at commit this process's own listeners are told at once. A rolled-back
change announces nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from zpay.store.models import Agent, ApiKey, PolicySession

CHANNEL = "zpay_credentials"
_WATCHED = (Agent, ApiKey, PolicySession)
_FLAG = "zpay_credentials_changed"
_LOCAL: set[Callable[[], None]] = set()


def on_local_change(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` when a transaction of this process that changed credentials
    commits; returns the function that stops it."""
    _LOCAL.add(callback)
    return lambda: _LOCAL.discard(callback)


@event.listens_for(Session, "after_flush")
def _announce(session: Session, _flush_context: Any) -> None:
    if session.info.get(_FLAG) or not any(
            isinstance(obj, _WATCHED) for obj in (*session.dirty, *session.deleted)):
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_notify('{CHANNEL}', '')")
    session.info[_FLAG] = True


@event.listens_for(Session, "after_commit")
def _tell_this_process(session: Session) -> None:
    if session.info.pop(_FLAG, False):
        for callback in list(_LOCAL):
            callback()


@event.listens_for(Session, "after_rollback")
def _forget_flag(session: Session) -> None:
    session.info.pop(_FLAG, None)
