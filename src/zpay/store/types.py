"""Column types that keep money exact and time in UTC on both SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

_DIGITS = 78  # uint256 fits in 78 decimal digits


class BaseUnits(TypeDecorator[int]):
    """Non-negative integer base units. NUMERIC(78,0) on PostgreSQL; on SQLite, whose
    NUMERIC affinity would turn big values into REAL (a float!), a zero-padded TEXT that
    still sorts and compares correctly."""

    impl = Numeric(_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(_DIGITS))
        return dialect.type_descriptor(Numeric(_DIGITS, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"base units must be a non-negative int, got {type(value).__name__}")
        return str(value).zfill(_DIGITS) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("a float reached a money column")
        return int(value)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SignedBaseUnits(TypeDecorator[int]):
    """Integer base units that may be negative: a difference between two amounts.
    NUMERIC(79,0) on PostgreSQL; on SQLite a decimal TEXT (exact, but it does not sort:
    such columns are compared in Python, never ordered in SQL)."""

    impl = Numeric(_DIGITS + 1, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(_DIGITS + 1))
        return dialect.type_descriptor(Numeric(_DIGITS + 1, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"base units must be an int, got {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("a float reached a money column")
        return int(value)
