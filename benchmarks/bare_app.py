"""The baselines: bare Litestar endpoints doing one trivial database transaction (a hot-row
UPDATE) or one indexed SELECT."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, get, post
from sqlalchemy import text

from zpay.store.database import make_engine

engine = make_engine(os.environ["BENCH_DATABASE_URL"], pool_size=20)


@asynccontextmanager
async def lifespan(_app: Litestar) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS bench_counter "
                                "(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        await conn.execute(text("DELETE FROM bench_counter"))
        await conn.execute(text("INSERT INTO bench_counter (id, n) VALUES (1, 0)"))
    yield
    await engine.dispose()


@post("/tx", status_code=200)
async def one_transaction() -> dict[str, int]:
    async with engine.begin() as conn:
        n = (await conn.execute(text("UPDATE bench_counter SET n = n + 1 WHERE id = 1 "
                                     "RETURNING n"))).scalar_one()
    return {"n": int(n)}


@get("/select")
async def one_select() -> dict[str, int]:
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT n FROM bench_counter WHERE id = 1"))).scalar_one()
    return {"n": int(n)}


app = Litestar([one_transaction, one_select], lifespan=[lifespan])
