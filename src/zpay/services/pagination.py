"""Cursor pagination over time-sortable ids (newest first)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select

from zpay.domain.errors import InvalidRequest

T = TypeVar("T")
S = TypeVar("S", bound=Select[*tuple[Any, ...]])
MAX_LIMIT = 100


@dataclass(frozen=True)
class Page:
    limit: int = 20
    starting_after: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")

    def apply(self, stmt: S, id_column: Any) -> S:
        if self.starting_after:
            stmt = stmt.where(id_column < self.starting_after)
        return stmt.order_by(id_column.desc()).limit(self.limit + 1)


def page_body(
    rows: Sequence[T], page: Page, render: Callable[[T], dict[str, Any]]
) -> dict[str, Any]:
    has_more = len(rows) > page.limit
    items = list(rows[: page.limit])
    data = [render(r) for r in items]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": data[-1]["id"] if has_more and data else None,
    }
