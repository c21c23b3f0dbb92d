"""Payments at the database's speed: zpay's hot path against its baselines, ONE run, ONE table.

Everything is driven by `wrk` (a C load generator, so the client is not the bottleneck) at
the same concurrency, one row after the other, on the same machine:

- zpay `POST /v1/payments` on ONE hot key, then spread over 32 keys (a Lua script gives
  every request its own Idempotency-Key), and `GET …/can-afford` on one key;
- the bare Litestar endpoints of `benchmarks/bare_app.py`: one hot-row UPDATE transaction,
  one indexed SELECT;
- pgbench's raw-SQL hot-row hold (UPDATE … WHERE funded - held >= amount + INSERT), the
  ceiling a payment on one key can approach;
- the history test: a key linked to a policy session with 10,000 prior payments in its
  month window against a fresh one;
- the same zpay rows and bare endpoints on SQLite.

Rows run in five interleaved rounds of a fifth of the time each (bare 1-tx, hot, spread, bare
SELECT, can-afford, raw SQL; then again), so a row and its baseline see the same machine.
Each zpay figure is also given as a ratio of its baseline (payments → bare 1-tx, can-afford →
bare SELECT; the hot key also → raw-SQL hot row). Absolute numbers on a shared machine are
noisy: compare ratios within one run.

    .venv/bin/python -m benchmarks.hot_path [--seconds 10] [--connections 32]
        [--databases postgresql,sqlite] [--workers 1]

Needs `wrk` and `pgbench` (Debian: `apt-get install wrk postgresql-client`; scripts/setup
installs both) and a PostgreSQL at $BENCH_PG (default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from solders.keypair import Keypair
from sqlalchemy import text

from benchmarks.authorizations import run_zpay, zpay_env
from benchmarks.common import (
    ROOT,
    VENV_BIN,
    Server,
    free_port,
    psql,
    recreate_pg_database,
    table,
)
from zpay.client.wallet import SolanaWallet
from zpay.store.database import make_null_pool_engine

WRK_DIR = ROOT / "benchmarks" / "wrk"
PAYMENT_AMOUNT = "0.01"
KEY_FUNDS = "1000"  # 100,000 payments of 0.01 per key: never exhausted during a run
SPREAD_KEYS = 32
HISTORY_PAYMENTS = 10_000


@dataclass
class Figure:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failures: int  # non-2xx answers and socket errors
    requests: int = 0
    quantiles_ms: tuple[float, ...] = ()  # the latency at each of QUANTILES

    def cells(self) -> list[str]:
        spread = f"{self.p99_ms / self.p50_ms:.1f}x" if self.p50_ms else "n/a"
        return [f"{self.requests_per_s:,.0f}", f"{self.p50_ms:.1f}", f"{self.p99_ms:.1f}",
                spread, str(self.failures)]


def wrk(url: str, script: str, args: list[str], seconds: float, connections: int) -> Figure:
    done = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds:g}s",
         "--timeout", "30s", "-s", str(WRK_DIR / script), url, "--", *args],
        check=True, capture_output=True, text=True)
    match = re.search(r"^RESULT (.*)$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    r = json.loads(match.group(1))
    return Figure(r["requests"] / (r["duration_us"] / 1e6), r["p50_us"] / 1000,
                  r["p99_us"] / 1000, r["non2xx"] + r["socket_errors"], r["requests"],
                  tuple(q / 1000 for q in r["quantiles_us"]))


# The probabilities of a Figure's `quantiles_ms` (as summary.lua prints them).
QUANTILES = (*(p / 100 for p in range(1, 100)), 0.999)


def pooled_quantile(runs: list[Figure], probability: float) -> float:
    """The latency at `probability` of several runs' requests together: each run's
    distribution (from its quantiles) weighted by its number of requests."""
    total = sum(r.requests for r in runs)

    def below(latency: float) -> float:  # the pooled share of requests at or under it
        return sum(r.requests * (QUANTILES[k - 1] if (k := bisect.bisect_right(
            r.quantiles_ms, latency)) else 0.0) for r in runs) / total

    candidates = sorted({q for r in runs for q in r.quantiles_ms})
    return next((c for c in candidates if below(c) >= probability - 1e-9), candidates[-1])


# --- zpay -----------------------------------------------------------------------------


@dataclass
class Fixture:
    hot: tuple[str, str]  # (session key id, agent token)
    spread: list[tuple[str, str]]
    fresh_linked: tuple[str, str]  # linked to a policy session without history
    history_linked: tuple[str, str]  # linked to a policy session with HISTORY_PAYMENTS
    history_policy_id: str


async def _funded_key(http: httpx.AsyncClient, session_id: str | None = None,
                      agent: dict[str, str] | None = None) -> tuple[str, str]:
    user = SolanaWallet.generate()
    (await http.post("/v1/faucet", json={"wallet": user.address,
                                         "amount": KEY_FUNDS})).raise_for_status()
    if agent is None:
        agent = (await http.post("/v1/agents", json={"name": "bench"})).json()
    body = {"agent_id": agent["id"], "user_wallet": user.address, "max_amount": KEY_FUNDS,
            "expires_in_seconds": 86400}
    if session_id is not None:
        body["session_id"] = session_id
    resp = await http.post("/v1/session-keys", json=body)
    resp.raise_for_status()
    key = resp.json()
    (await http.post(f"/v1/session-keys/{key['id']}/approval",
                     json=user.sign_approval(key))).raise_for_status()
    return key["id"], agent["token"]


async def _linked_key(http: httpx.AsyncClient) -> tuple[str, str, str]:
    agent = (await http.post("/v1/agents", json={"name": "bench"})).json()
    resp = await http.post("/v1/sessions", json={
        "agent_id": agent["id"], "max_per_transaction": "100", "max_per_day": "1000000",
        "max_per_week": "1000000", "max_per_month": "1000000"})
    resp.raise_for_status()
    session = resp.json()
    key_id, token = await _funded_key(http, session["id"], agent)
    return key_id, token, session["id"]


async def prepare(base_url: str, api_key: str, with_history: bool) -> Fixture:
    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {api_key}"}) as http:
        hot = await _funded_key(http)
        spread = [await _funded_key(http) for _ in range(SPREAD_KEYS)]
        fresh = history = ("", "")
        history_policy = ""
        if with_history:
            fresh_id, fresh_token, _ = await _linked_key(http)
            fresh = (fresh_id, fresh_token)
            hist_id, hist_token, history_policy = await _linked_key(http)
            history = (hist_id, hist_token)
    return Fixture(hot, spread, fresh, history, history_policy)


async def add_history(database_url: str, key_id: str, policy_id: str) -> None:
    """10,000 captured payments of the key, spread over the last 29 days, written straight
    into the table (making them through the API would take minutes): what a month of use
    leaves behind. The books of the key are not touched; only the policy's windows see them."""
    engine = make_null_pool_engine(database_url)
    now = datetime.now(UTC)
    step = timedelta(days=29) / HISTORY_PAYMENTS
    rows = [{"id": f"pay_hist{i:026d}", "at": now - timedelta(days=29) + i * step}
            for i in range(HISTORY_PAYMENTS)]
    try:
        async with engine.begin() as conn:
            key = (await conn.execute(text(
                "SELECT merchant_id, agent_id, chain FROM session_keys WHERE id = :id"),
                {"id": key_id})).one()
            await conn.execute(text(
                "INSERT INTO payments (id, merchant_id, session_key_id, agent_id, "
                "policy_session_id, chain, amount, recipient, description, status, "
                "tx_reference, tx_id, failure_code, idempotency_key, created_at, updated_at) "
                "VALUES (:id, :merchant, :key, :agent, :policy, :chain, 10000, 'history', "
                "NULL, 'succeeded', NULL, NULL, NULL, NULL, :at, :at)"),
                [{**r, "merchant": key.merchant_id, "key": key_id, "agent": key.agent_id,
                  "policy": policy_id, "chain": key.chain} for r in rows])
        # Where windows are kept as running totals, bring them to what a migration of this
        # data would give (the first payment then subtracts what has left each window).
        try:
            from zpay.services.windows import rebuild as rebuild_windows
        except ImportError:
            return
        async with engine.begin() as conn:
            await rebuild_windows(conn, policy_id)
    finally:
        await engine.dispose()


# wrk and pgbench take whole seconds: `--seconds 10` is five interleaved 2-second slices.
ROUNDS = 5
HISTORY_ROUNDS = 5


ORDER = ("bare_tx", "hot", "spread", "alone", "bare_select", "can_afford", "raw")


def slice_of(seconds: float, rounds: int) -> int:
    return max(1, round(seconds / rounds))


def bench_zpay(database_url: str, seconds: float, connections: int, workers: int,
               tmp: Path, with_history: bool,
               baselines: dict[str, Callable[[float], Figure]]) -> dict[str, Figure]:
    """Every row in ROUNDS interleaved slices of ~`seconds / ROUNDS` (baselines included):
    the load of a shared machine drifts, and a row and its baseline must see the same."""
    # Rate limits are a deployment's policy, not the payment path: off, as in the baseline.
    env = {**zpay_env(database_url, tmp), "ZPAY_RATE_LIMIT_ENABLED": "0"}
    if workers > 1:  # the workers share the connections one process would have
        env["ZPAY_DB_POOL_SIZE"] = str(max(5, 20 // workers))
    run_zpay(["db", "upgrade"], env)
    created = run_zpay(["merchants", "create", "--name", "bench"], env)
    match = re.search(r"(sk_test_\w+)", created)
    assert match is not None
    port = free_port()
    args = [str(VENV_BIN / "zpay"), "serve", "--port", str(port), "--no-scheduler"]
    if workers > 1:
        args += ["--workers", str(workers)]
    server = Server(args, env, port)
    figures: dict[str, Figure] = {}
    try:
        server.wait_ready(timeout_s=120)
        fx = asyncio.run(prepare(server.url, match.group(1), with_history))
        if with_history:
            asyncio.run(add_history(database_url, fx.history_linked[0], fx.history_policy_id))
        to = str(Keypair().pubkey())
        run = uuid.uuid4().hex[:8]

        def pay(name: str, keys: list[tuple[str, str]], secs: float,
                conns: int = connections) -> Figure:
            keys_file = tmp / f"{name}.keys"
            keys_file.write_text("".join(f"{k} {t}\n" for k, t in keys))
            return wrk(server.url, "pay.lua", [str(keys_file), PAYMENT_AMOUNT, to,
                                               f"{run}-{name}"], secs, conns)

        def can_afford(secs: float) -> Figure:
            return wrk(server.url, "get.lua",
                       [f"/v1/session-keys/{fx.hot[0]}/can-afford?amount={PAYMENT_AMOUNT}",
                        fx.hot[1]], secs, connections)

        # Warm, as each baseline is: every connection of every worker opened, its
        # statements prepared and planned; caches filled; the chain's accounts loaded.
        pay("warm", [fx.hot], min(seconds, 3))
        can_afford(min(seconds, 2))
        settle_database(database_url)
        rows: dict[str, Callable[[float], Figure]] = {
            **baselines,
            "hot": lambda secs: pay("hot", [fx.hot], secs),
            "spread": lambda secs: pay("spread", fx.spread, secs),
            # One payment at a time: its latency is the server's time plus loopback.
            "alone": lambda secs: pay("alone", fx.spread, secs, conns=1),
            "can_afford": can_afford,
        }
        slices: dict[str, list[Figure]] = {name: [] for name in ORDER if name in rows}
        for _ in range(ROUNDS):
            for name in slices:
                slices[name].append(rows[name](slice_of(seconds, ROUNDS)))
        figures.update({name: combined(r) for name, r in slices.items()})
        if with_history:
            # Interleaved (fresh, history, fresh, history, …): on a shared machine the load
            # drifts within a minute, and the two must see the same.
            runs: dict[str, list[Figure]] = {"fresh": [], "history": []}
            settle_database(database_url)
            for _ in range(HISTORY_ROUNDS):
                runs["fresh"].append(pay("fresh", [fx.fresh_linked],
                                         slice_of(seconds, HISTORY_ROUNDS)))
                runs["history"].append(pay("history", [fx.history_linked],
                                           slice_of(seconds, HISTORY_ROUNDS)))
            figures.update({name: combined(r) for name, r in runs.items()})
    finally:
        server.stop()
    return figures


def settle_database(database_url: str) -> None:
    """Before measuring, as pgbench does (VACUUM) and a little more: the fixtures' dirty
    pages flushed (CHECKPOINT) and fresh statistics (VACUUM ANALYZE), so a checkpoint or
    an autovacuum of the set-up's writes does not land in one row's slice."""
    if not database_url.startswith("postgresql"):
        return
    psql("VACUUM ANALYZE", "CHECKPOINT", database=database_url.rsplit("/", 1)[1])


def combined(runs: list[Figure]) -> Figure:
    """Runs of equal length: the mean rate; p50 and p99 of all their requests together
    (pooled from each run's quantiles; the slowest run's p99 would grow with the number
    of slices); all failures."""
    rate, failures = statistics.mean(r.requests_per_s for r in runs), sum(
        r.failures for r in runs)
    if not all(r.quantiles_ms and r.requests for r in runs):
        return Figure(rate, statistics.median(r.p50_ms for r in runs),
                      max(r.p99_ms for r in runs), failures)
    return Figure(rate, pooled_quantile(runs, 0.50), pooled_quantile(runs, 0.99), failures,
                  sum(r.requests for r in runs))


# --- baselines ------------------------------------------------------------------------


@contextlib.contextmanager
def bare_endpoints(database_url: str, connections: int) -> Iterator[dict[str, Callable[
        [float], Figure]]]:
    port = free_port()
    server = Server([str(VENV_BIN / "uvicorn"), "benchmarks.bare_app:app", "--port", str(port),
                     "--log-level", "warning"], {"BENCH_DATABASE_URL": database_url}, port)
    try:
        server.wait_ready("/select")
        wrk(server.url, "post.lua", ["/tx"], 2, connections)
        wrk(server.url, "get.lua", ["/select"], 2, connections)
        yield {"bare_tx": lambda secs: wrk(server.url, "post.lua", ["/tx"], secs, connections),
               "bare_select": lambda secs: wrk(server.url, "get.lua", ["/select"], secs,
                                               connections)}
    finally:
        server.stop()


HOLD_SQL = """\
BEGIN;
UPDATE bench_keys SET held = held + 1 WHERE id = 1 AND funded - held >= 1;
INSERT INTO bench_holds (key_id, amount) VALUES (1, 1);
COMMIT;
"""


def pgbench_hold(db_name: str, connections: int, tmp: Path) -> Callable[[float], Figure]:
    psql("CREATE TABLE bench_keys (id int PRIMARY KEY, funded bigint, held bigint); "
         "CREATE TABLE bench_holds (id bigserial PRIMARY KEY, key_id int, amount bigint, "
         "created_at timestamptz DEFAULT now()); "
         "INSERT INTO bench_keys VALUES (1, 1000000000000000, 0)", database=db_name)
    script = tmp / "hold.sql"
    script.write_text(HOLD_SQL)

    def run(seconds: float) -> Figure:
        logs = Path(tempfile.mkdtemp(dir=tmp))
        out = subprocess.run(
            ["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-n", "-M", "prepared", "-c",
             str(connections), "-j", "2", "-T", f"{max(round(seconds), 1)}", "-f",
             str(script), "-l", f"--log-prefix={logs}/tx", db_name],
            check=True, capture_output=True, text=True).stdout
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        latencies = sorted(int(line.split()[2]) / 1000 for f in logs.iterdir()
                           for line in f.read_text().splitlines())
        quantiles = tuple(latencies[min(len(latencies) - 1, int(p * len(latencies)))]
                          for p in QUANTILES)
        return Figure(tps, quantiles[49], quantiles[98], 0, len(latencies), quantiles)

    return run


# --- the table ------------------------------------------------------------------------


def ratio(a: Figure, b: Figure) -> str:
    return f"{a.requests_per_s / b.requests_per_s:.0%}" if b.requests_per_s else "n/a"


def main() -> None:
    if shutil.which("wrk") is None or shutil.which("pgbench") is None:
        raise SystemExit("needs wrk and pgbench: apt-get install wrk postgresql-client")
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--workers", type=int, default=1, help="zpay serve --workers")
    args = parser.parse_args()
    secs, conns = args.seconds, args.connections
    rows: list[list[str]] = []
    history: dict[str, Figure] = {}
    suffix = f"{os.getpid()}"
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            names: list[str] = []
            if database == "postgresql":
                names = [f"zpay_hot_{suffix}", f"zpay_bare_{suffix}", f"zpay_pgb_{suffix}"]
                zpay_url, bare_url = (recreate_pg_database(names[0]),
                                      recreate_pg_database(names[1]))
                recreate_pg_database(names[2])
            else:
                zpay_url = f"sqlite+aiosqlite:///{tmp}/zpay.db"
                bare_url = f"sqlite+aiosqlite:///{tmp}/bare.db"
            try:
                with bare_endpoints(bare_url, conns) as baselines:
                    if database == "postgresql":
                        baselines["raw"] = pgbench_hold(names[2], conns, tmp)
                    z = bench_zpay(zpay_url, secs, conns, args.workers, tmp,
                                   with_history=database == "postgresql", baselines=baselines)
            finally:
                for name in names:
                    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)
        tx, sel, raw = z["bare_tx"], z["bare_select"], z.get("raw")
        hot_vs = ratio(z["hot"], tx) + (f" ({ratio(z['hot'], raw)} of raw)" if raw else "")
        rows += [
            [f"zpay payment, ONE hot key ({database})", *z["hot"].cells(), hot_vs],
            [f"zpay payment, spread over {SPREAD_KEYS} keys ({database})",
             *z["spread"].cells(), ratio(z["spread"], tx)],
            [f"zpay payment alone, 1 connection ({database})", *z["alone"].cells(),
             f"p50 {z['alone'].p50_ms:.1f} ms"],
            [f"zpay can-afford, one key ({database})", *z["can_afford"].cells(),
             ratio(z["can_afford"], sel)],
            [f"bare Litestar 1-tx hot-row UPDATE ({database})", *tx.cells(), "baseline"],
            [f"bare Litestar indexed SELECT ({database})", *sel.cells(), "baseline"],
        ]
        if raw is not None:
            rows.append([f"raw-SQL hot-row hold, pgbench ({database})", *raw.cells(),
                         "ceiling"])
        if "history" in z:
            history = {"fresh": z["fresh"], "history": z["history"]}
    print(f"\n{conns} connections, {secs:g} s per row, zpay serve --workers {args.workers}, "
          f"solana-local, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    print(table(["what", "req/s", "p50 ms", "p99 ms", "p99/p50", "failed", "ratio of baseline"],
                rows))
    if history:
        f, h = history["fresh"], history["history"]
        print(f"\nhistory (PostgreSQL, one hot key linked to a policy session, "
              f"{HISTORY_PAYMENTS:,} prior payments in its month window vs none):\n")
        print(table(["what", "req/s", "p50 ms", "p99 ms", "p99/p50", "failed", "ratio"], [
            ["fresh key, no history", *f.cells(), "baseline"],
            [f"key with {HISTORY_PAYMENTS:,} prior payments", *h.cells(), ratio(h, f)],
        ]))


if __name__ == "__main__":
    main()
