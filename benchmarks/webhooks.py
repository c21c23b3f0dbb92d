"""Webhooks delivered per second to a local receiver with one and with two `zpay worker`
processes on one PostgreSQL, and the delay from state change (the event's `created_at`,
written in the same transaction as the change) to the receiver, p50/p99.

Two phases per worker count: a backlog of `--events` events written before the workers
start (throughput: first to last arrival), then `--rate` events per second for
`--seconds` while they run (delay). The delay is dominated by the tick interval.

    .venv/bin/python -m benchmarks.webhooks [--events 2000] [--rate 200] [--seconds 5]
                                            [--interval 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import ROOT, recreate_pg_database, table
from zpay.services.auth import Principal, Role
from zpay.services.context import AppContext
from zpay.settings import Settings

DB_NAME = "zpay_bench_webhooks"
BATCH = 500  # events per transaction when writing the backlog


async def _serve_receiver(log_path: str) -> None:
    """A minimal asyncio HTTP/1.1 receiver, fast enough not to be what is measured."""
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:]
                               if b": " in line)
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                arrived = time.time()
                created = datetime.fromisoformat(json.loads(body)["created_at"]).timestamp()
                out.write(f"{headers[b'webhook-id'].decode()} {arrived} {created}\n")
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


class Receiver:
    """The receiver in its own process, so it shares no GIL with what emits events.
    Arrivals are lines `webhook-id arrived created` (Unix seconds) in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.webhooks",
                                      "--serve-receiver", str(log)], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/hook"

    def snapshot(self) -> list[tuple[str, float, float]]:
        if not self.log.exists():
            return []
        text = self.log.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits
        return [(i, float(a), float(c))
                for i, a, c in (line.split() for line in complete.splitlines())]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def emit_events(ctx: AppContext, principal: Principal, count: int) -> None:
    from zpay.services.events import emit

    async with ctx.db.transaction() as s:
        for i in range(count):
            emit(s, merchant_id=principal.merchant_id, type="session.created",
                 object_type="session", object_id=f"ses_bench{i}", data={"n": i},
                 now=ctx.now())


def start_workers(settings: Settings, count: int, interval_s: float,
                  data_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "ZPAY_DATABASE_URL": settings.database_url,
           "ZPAY_MASTER_KEY": settings.master_key, "ZPAY_DATA_DIR": str(data_dir),
           "ZPAY_CHAINS": "", "ZPAY_WEBHOOKS_ALLOW_PRIVATE": "1",
           "ZPAY_SCHEDULER_INTERVAL_S": str(interval_s), "ZPAY_LOG_LEVEL": "WARNING"}
    return [subprocess.Popen([sys.executable, "-m", "zpay.cli", "worker"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL) for _ in range(count)]


async def wait_for(rx: Receiver, total: int, workers: list[subprocess.Popen[bytes]],
                   timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len({a[0] for a in rx.snapshot()}) < total:
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(rx.snapshot())} of {total} delivered")
        await asyncio.sleep(0.02)


def quantile(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


async def bench(workers: int, args: argparse.Namespace) -> list[str]:
    from zpay.api.app import build_context
    from zpay.services.merchants import create_merchant
    from zpay.services.webhooks import EndpointRequest, create_endpoint
    from zpay.store.migrate import upgrade

    url = recreate_pg_database(DB_NAME)
    await asyncio.to_thread(upgrade, url)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=url, data_dir=Path(tmp), chains=(),
                            master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                            webhooks_allow_private=True, scheduler_enabled=False)
        ctx = await build_context(settings)
        rx = Receiver(Path(tmp) / "arrivals.log")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            merchant = await create_merchant(ctx, "bench")
            principal = Principal(merchant.merchant_id, Role.MERCHANT)
            await create_endpoint(ctx, principal, EndpointRequest(url=rx.url))
            for start in range(0, args.events, BATCH):
                await emit_events(ctx, principal, min(BATCH, args.events - start))
            procs = start_workers(settings, workers, args.interval, Path(tmp))
            await wait_for(rx, args.events, procs)
            backlog = rx.snapshot()
            arrived = [a[1] for a in backlog]
            per_second = args.events / (max(arrived) - min(arrived))

            step_s = 0.02
            per_step = max(1, round(args.rate * step_s))
            steps = round(args.seconds / step_s)
            started = time.monotonic()
            for i in range(steps):
                await emit_events(ctx, principal, per_step)
                await asyncio.sleep(max(0.0, started + (i + 1) * step_s - time.monotonic()))
            total = args.events + per_step * steps
            await wait_for(rx, total, procs)
            await asyncio.sleep(5 * args.interval)  # let any duplicate arrive
            everything = rx.snapshot()
            steady = everything[len(backlog):]
            delays_ms = [(a[1] - a[2]) * 1000 for a in steady]
            duplicates = len(everything) - len({a[0] for a in everything})
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            rx.stop()
            await ctx.db.dispose()
    return [str(workers), str(args.events), f"{per_second:,.0f}",
            f"{per_step / step_s:,.0f}/s", f"{quantile(delays_ms, 0.5):.0f}",
            f"{quantile(delays_ms, 0.99):.0f}", str(duplicates)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200, help="events/s in the delay phase")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--interval", type=float, default=0.1, help="scheduler tick, seconds")
    parser.add_argument("--serve-receiver", metavar="LOG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        await _serve_receiver(args.serve_receiver)
        return
    rows = [await bench(workers, args) for workers in (1, 2)]
    print(f"webhooks to a loopback receiver, PostgreSQL, tick {args.interval:g}s")
    print(table(["workers", "backlog", "delivered/s", "steady load", "delay p50 ms",
                 "delay p99 ms", "duplicates"], rows))


if __name__ == "__main__":
    asyncio.run(main())
