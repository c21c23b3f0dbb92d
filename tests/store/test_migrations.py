"""The Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from zpay.store import (
    audit_models,  # noqa: F401 - its table is part of the metadata
    dashboard_models,  # noqa: F401 - its tables are part of the metadata
    rate_limit_models,  # noqa: F401 - its table is part of the metadata
    relayer_models,  # noqa: F401 - its tables are part of the metadata
    user_models,  # noqa: F401 - its tables are part of the metadata
    x402_models,  # noqa: F401 - its table is part of the metadata
)
from zpay.store.migrate import head_revision
from zpay.store.models import Base


async def test_migrated_schema_matches_models(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            def diff(sync_conn: Any) -> list[Any]:
                return list(compare_metadata(MigrationContext.configure(sync_conn),
                                             Base.metadata))

            assert await conn.run_sync(diff) == []
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                       ).scalar_one()
            assert version == head_revision()
    finally:
        await engine.dispose()


async def test_money_columns_keep_uint256_exactly(database_url: str) -> None:
    from sqlalchemy import Column, MetaData, String, Table, insert, select

    from zpay.store.types import BaseUnits

    table = Table("zz_money_probe", MetaData(), Column("id", String(8), primary_key=True),
                  Column("amount", BaseUnits()))
    engine = create_async_engine(database_url)
    big = 2**256 - 1
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create)
            await conn.execute(insert(table), [{"id": "a", "amount": big}, {"id": "b",
                                                                             "amount": 7}])
            rows = dict((await conn.execute(select(table.c.id, table.c.amount))).all())
            assert rows == {"a": big, "b": 7}
            assert all(type(v) is int for v in rows.values())
            ordered = (await conn.execute(select(table.c.id).order_by(table.c.amount))).scalars()
            assert list(ordered) == ["b", "a"]
            await conn.run_sync(table.drop)
    finally:
        await engine.dispose()
