"""Terminal output for the `zpay` CLI: tables, resources, progress and errors.

Data goes to stdout (a table, `key  value` lines, or JSON with `--json`); everything
meant for the person — progress, shown-once warnings, errors — goes to stderr, so
`zpay … --json | jq` always sees clean JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from zpay.client.errors import APIConnectionError, ZpayError
from zpay.client.types import (
    Agent,
    ApiKey,
    Approval,
    Event,
    Payment,
    PaymentAttempt,
    PolicySession,
    Resource,
    SessionKey,
    WebhookDelivery,
    WebhookEndpoint,
)

# Columns of `list` tables, by result type: (header, key in the JSON).
COLUMNS: dict[type[Resource], tuple[tuple[str, str], ...]] = {
    SessionKey: (("ID", "id"), ("STATUS", "status"), ("CHAIN", "chain"), ("TOKEN", "token"),
                 ("FUNDED", "funded_amount"), ("SPENT", "spent_amount"),
                 ("REMAINING", "remaining_amount"), ("AGENT", "agent_id"),
                 ("LINKED", "linked_session_id"), ("EXPIRES", "expires_at")),
    Agent: (("ID", "id"), ("NAME", "name"), ("STATUS", "status"), ("TOKEN", "token_hint"),
            ("CREATED", "created_at")),
    ApiKey: (("ID", "id"), ("NAME", "name"), ("STATUS", "status"), ("KEY", "hint"),
             ("CREATED", "created_at"), ("EXPIRES", "expires_at")),
    PolicySession: (("ID", "id"), ("STATUS", "status"), ("AGENT", "agent_id"),
                    ("PER_TX", "max_per_transaction"), ("PER_DAY", "max_per_day"),
                    ("TOTAL", "max_total"), ("EXPIRES", "expires_at")),
    Payment: (("ID", "id"), ("STATUS", "status"), ("AMOUNT", "amount"), ("TOKEN", "token"),
              ("RECIPIENT", "recipient"), ("FAILURE", "failure_code"), ("CREATED", "created_at")),
    PaymentAttempt: (("ID", "id"), ("ALLOWED", "allowed"), ("REASON", "reason"),
                     ("AMOUNT", "amount"), ("RECIPIENT", "recipient"), ("PAYMENT", "payment_id"),
                     ("AT", "created_at")),
    WebhookEndpoint: (("ID", "id"), ("URL", "url"), ("ENABLED", "enabled"),
                      ("EVENTS", "event_types"), ("DISABLED_REASON", "disabled_reason")),
    WebhookDelivery: (("ID", "id"), ("STATUS", "status"), ("EVENT", "event_type"),
                      ("ATTEMPTS", "attempt_count"), ("LAST_STATUS", "last_status_code"),
                      ("NEXT_ATTEMPT", "next_attempt_at")),
    Event: (("ID", "id"), ("TYPE", "type"), ("OBJECT", "object_id"), ("AT", "created_at")),
    Approval: (("ID", "id"), ("KIND", "kind"), ("STATUS", "status"), ("AMOUNT", "amount"),
               ("EXPIRES", "expires_at")),
}

# Wallet payloads and nested detail: in --json output, too long for `key  value` lines.
_BULKY = frozenset({"approval_transaction", "typed_data", "unsigned_transaction", "approval",
                    "security", "data", "windows", "attempts", "raw"})
_SHOWN_ONCE = {Agent: "token", PolicySession: "access_token", WebhookEndpoint: "secret",
               ApiKey: "secret"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
          out: TextIO) -> None:
    cells = [[h for h, _ in columns]] + [[_cell(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # never a JSON number: readers would make it a float
    if isinstance(value, Resource):
        return value.raw
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(value: Any, out: TextIO) -> None:
    if isinstance(value, Resource):
        value = value.raw
    elif isinstance(value, list) and all(isinstance(v, Resource) for v in value):
        value = {"object": "list", "data": [v.raw for v in value]}
    out.write(json.dumps(value, indent=2, default=_json_default) + "\n")


def show(value: Any, *, as_json: bool, item_type: type[Resource] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Print a result: a Resource, a list of them (a table), or a plain mapping."""
    out = out or sys.stdout
    err = err or sys.stderr
    if as_json:
        emit_json(value.items if isinstance(value, Rows) else value, out)
        return
    if isinstance(value, Rows):
        value, item_type = value.items, value.item
    if isinstance(value, list):
        cls = item_type or (type(value[0]) if value else None)
        columns = COLUMNS.get(cls) if cls else None
        if columns is None:
            columns = (("ID", "id"),)
        table([v.raw if isinstance(v, Resource) else v for v in value], columns, out)
        if not value:
            err.write("(none)\n")
        return
    fields = value.raw if isinstance(value, Resource) else dict(value)
    secret_field = _SHOWN_ONCE.get(type(value)) if isinstance(value, Resource) else None
    secret = getattr(value, secret_field) if secret_field else None
    width = max((len(k) for k in fields), default=0)
    for key, item in fields.items():
        if key in _BULKY or isinstance(item, dict):
            continue
        out.write(f"{key.ljust(width)}  {_cell(item)}\n")
    if secret_field and secret:
        err.write(f"note: the {secret_field.replace('_', ' ')} above is shown once; "
                  "store it now\n")


def error(exc: BaseException, err: TextIO | None = None) -> int:
    """Print an error for a person and return the exit code."""
    err = err or sys.stderr
    if isinstance(exc, APIConnectionError):
        err.write(f"error: cannot reach zpay: {exc.detail}\n")
        return 1
    if isinstance(exc, ZpayError):
        err.write(f"error: {exc.detail} ({exc.code})\n")
        return 1
    err.write(f"error: {exc}\n")
    return 1


@contextmanager
def progress(message: str, err: TextIO | None = None) -> Iterator[None]:
    """Say what we wait for; on a terminal, tick the seconds while the call runs."""
    err = err or sys.stderr
    started = time.monotonic()
    live = err.isatty()
    stop = threading.Event()
    ticker: threading.Thread | None = None
    if live:
        def tick() -> None:
            while not stop.wait(0.2):
                err.write(f"\r{message} … {time.monotonic() - started:4.1f}s")
                err.flush()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    else:
        err.write(f"{message} …\n")
        err.flush()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        outcome = "done" if ok else "failed"
        prefix = f"\r{message} … " if live else "  "
        err.write(f"{prefix}{outcome} in {time.monotonic() - started:.1f}s\n")
        err.flush()


@dataclass(frozen=True)
class Rows:
    """A list to print as a table; `item` names the columns even when it is empty."""

    items: list[Any]
    item: type[Resource]
