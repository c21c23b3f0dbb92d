"""Two `zpay worker` processes on one PostgreSQL: no delivery sent twice, no key expired twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from solders.keypair import Keypair
from sqlalchemy import func, select, update

from tests.jobs.receivers import Loopback, ids
from tests.jobs.support import endpoint, merchant
from zpay.services import agents, session_keys
from zpay.services.context import AppContext
from zpay.settings import Settings
from zpay.store.models import Event, SessionKey

KEYS = 100  # 100 session_key.created + 100 session_key.expired = 200 events
WORKERS = 2
INTERVAL_S = 0.1
TIMEOUT_S = 60.0
BANNER = "zpay worker: jobs every"


def start_worker(settings: Settings, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "ZPAY_DATABASE_URL": settings.database_url,
           "ZPAY_MASTER_KEY": settings.master_key,
           "ZPAY_DATA_DIR": str(data_dir),
           # The embedded chain belongs to the test process; expiry and webhooks need none.
           "ZPAY_CHAINS": "",
           "ZPAY_WEBHOOKS_ALLOW_PRIVATE": "1",
           "ZPAY_SCHEDULER_INTERVAL_S": str(INTERVAL_S)}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "zpay.cli", "worker"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def until(condition: Callable[[], bool], workers: list[subprocess.Popen[bytes]],
                logs: list[Path]) -> None:
    started = time.monotonic()
    while not condition():
        assert all(w.poll() is None for w in workers), [log.read_text() for log in logs]
        assert time.monotonic() - started < TIMEOUT_S, [log.read_text() for log in logs]
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_workers_deliver_each_event_once_and_expire_each_key_once(
        ctx: AppContext, settings: Settings, tmp_path: Path) -> None:
    principal = await merchant(ctx)
    agent = await agents.create_agent(ctx, principal, "shopper")
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    workers = [start_worker(settings, tmp_path / f"worker{i}", log)
               for i, log in enumerate(logs)]
    try:
        with Loopback() as rx:
            # Both workers up before any work exists, so they race for every row.
            await until(lambda: all(BANNER in log.read_text() for log in logs), workers, logs)
            await endpoint(ctx, principal, rx.url())
            for _ in range(KEYS):
                await session_keys.create_session_key(
                    ctx, principal, session_keys.SessionKeyRequest(
                        agent_id=agent["id"], user_wallet=str(Keypair().pubkey()),
                        max_amount="1", expires_in_seconds=60, refund_on_close=False))
            async with ctx.db.transaction() as s:  # an hour passes
                await s.execute(update(SessionKey).values(
                    expires_at=ctx.now() - timedelta(seconds=1)))
            await until(lambda: len(rx.requests) >= 2 * KEYS, workers, logs)
            await asyncio.sleep(10 * INTERVAL_S)  # time for any duplicate to show up
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=30) for w in workers]
    output = [log.read_text() for log in logs]
    assert codes == [0] * WORKERS, output

    async with ctx.db.sessions() as s:
        event_ids = (await s.execute(select(Event.id))).scalars().all()
        expired_per_key = (await s.execute(
            select(Event.object_id, func.count()).where(Event.type == "session_key.expired")
            .group_by(Event.object_id))).all()
        statuses = (await s.execute(select(SessionKey.status, func.count())
                                    .group_by(SessionKey.status))).all()
    assert len(event_ids) == 2 * KEYS
    assert ids(rx) == {event_id: 1 for event_id in event_ids}
    assert len(expired_per_key) == KEYS and {n for _, n in expired_per_key} == {1}
    assert [tuple(row) for row in statuses] == [("expired", KEYS)]
