"""Time-sortable prefixed ids, so `ORDER BY id` is creation order and cursors are stable."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
