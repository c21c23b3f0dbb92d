"""Books == chain, with the chain as the referee.

Runs real `zpay serve` / `zpay worker` processes against one database and one data
directory, funds N agents' session keys through the real approval flow, fires N x P
concurrent 1-USDC payments (plus one too many per key) round-robin at the replicas — under
an optional burnt core and optional kill -9 of a server — waits until the books call every
payment final, then asks the CHAIN, independently of zpay's adapters where it can (EVM: raw
JSON-RPC: `authorizationState`, receipts, a scan of every block), what really happened:

- per payment: the chain's verdict (confirmed / proven failed / may still land / never
  sent) against the books' status (succeeded / failed / not final);
- per recipient: on-chain balance against the sum of its succeeded payments;
- per session wallet: on-chain balance against funded - spent - refunded (- held);
- relayer: transactions per authorization (a second one is a nonce/duplicate conflict),
  reverted transactions, fillers, and the servers' own nonce-resync warnings;
- `zpay audit`, when the command exists;
- after kills: every Idempotency-Key retried once answers the payment's real outcome (no
  409), and no embedded anvil outlives the server that started it.

    .venv/bin/python -m benchmarks.books_vs_chain [--chain evm-local|solana-local]
        [--anvil external|embedded] [--agents 16] [--payments 50] [--runs 1]
        [--database sqlite|postgres] [--load] [--replicas N --workers M] [--kill N]

Prints one table per run and a summary; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import PG, ROOT, VENV_BIN, free_port, psql, table

USDC = 10**6
ORPHAN_AFTER_S = 5.0  # an embedded anvil still alive this long after its server died
FINAL = ("succeeded", "failed")
# Selectors and topics, computed here rather than imported: the referee does not share the
# code under test (keccak256 of the ABI signatures, as every EVM tool computes them).
_SIG_TWA = ("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,"
            "uint8,bytes32,bytes32)")


def _keccak(text: str) -> bytes:
    from eth_utils import keccak

    return bytes(keccak(text=text))


SEL_TWA = _keccak(_SIG_TWA)[:4]
SEL_AUTH_STATE = _keccak("authorizationState(address,bytes32)")[:4]
SEL_BALANCE_OF = _keccak("balanceOf(address)")[:4]
TOPIC_TRANSFER = _keccak("Transfer(address,address,uint256)")
TOPIC_AUTH_USED = _keccak("AuthorizationUsed(address,bytes32)")


# --------------------------------------------------------------------------- configuration


@dataclass
class SoakConfig:
    chain: str = "evm-local"  # evm-local | solana-local
    anvil: str = "external"  # evm-local: external (anvil --block-time) | embedded (zpay's)
    agents: int = 16
    payments_per_agent: int = 50  # each key is funded with exactly this many USDC
    inflight_per_agent: int = 2  # concurrent requests per agent
    extra_payment: bool = True  # one payment too many per key: must be refused
    recipients: int = 4
    database: str = "postgres"  # sqlite | postgres
    load: bool = False  # burn one core with a subprocess during the run
    replicas: int = 1
    workers: int = 0
    kills: int = 0  # kill -9 a `zpay serve` this many times under load, restart it
    block_time_s: int = 1
    retry_all: bool = False  # retry every Idempotency-Key once at the end (on with kills)
    final_timeout_s: float = 180.0  # give up waiting for the books after this
    settle_grace_s: float = 30.0  # chain definitive this long but books not final: give up
    label: str = ""
    profile: bool = False  # run the first server under cProfile, print its top functions
    keep: bool = False  # keep the data directory (and database) for inspection
    quiet: bool = False

    def check(self) -> None:
        if self.chain not in ("evm-local", "solana-local"):
            raise SystemExit(f"unknown chain {self.chain}")
        embedded = self.chain == "solana-local" or self.anvil == "embedded"
        if embedded and (self.replicas > 1 or self.workers > 0):
            # LiteSVM lives inside one process; an embedded anvil is one per process.
            raise SystemExit(f"{self.chain} ({'embedded' if embedded else ''}) runs in one "
                             "process: use --replicas 1 --workers 0 (EVM external anvil "
                             "for more)")
        if self.replicas < 1:
            raise SystemExit("--replicas must be >= 1")

    @property
    def embedded_anvil(self) -> bool:
        return self.chain == "evm-local" and self.anvil == "embedded"

    def describe(self) -> str:
        chain = self.chain + (f" ({self.anvil} anvil)" if self.chain == "evm-local" else "")
        return (f"{chain}, {self.database}, {self.agents} agents x {self.payments_per_agent} "
                f"payments, {self.replicas} serve + {self.workers} worker"
                f"{', 1 core burnt' if self.load else ''}"
                f"{f', {self.kills} kill -9' if self.kills else ''}")


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    label: str
    config: str
    requests: int = 0  # payment requests answered or attempted (incl. the extra ones)
    payments: int = 0  # rows in the books
    succeeded: int = 0
    failed: int = 0
    not_final: int = 0
    refused: int = 0  # 4xx refusals (the extra payments)
    extra_allowed: int = 0  # an extra (51st) payment the books let through
    answer_errors: Counter[str] = field(default_factory=Counter)  # lost answers, 5xx, 409
    chain: Counter[str] = field(default_factory=Counter)  # verdicts
    failure_codes: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)  # books status != chain verdict
    balance_diffs: list[str] = field(default_factory=list)
    tx_id_diffs: list[str] = field(default_factory=list)
    relayer: dict[str, int] = field(default_factory=dict)
    logs: dict[str, int] = field(default_factory=dict)
    log_samples: list[str] = field(default_factory=list)
    audit: str = "n/a"
    audit_differences: int | None = None
    audit_rc: int | None = None
    audit_detail: str = ""
    kills: int = 0
    retries: int = 0
    retry_409: list[str] = field(default_factory=list)
    retry_wrong: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # harness-level failures
    pay_seconds: float = 0.0
    final_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def duplicate_auth_txs(self) -> int:
        return self.relayer.get("duplicate_authorization_txs", 0)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.balance_diffs or self.not_final or self.retry_409
                    or self.retry_wrong or self.orphans or self.errors or self.extra_allowed
                    or self.duplicate_auth_txs or self.audit_differences
                    or (self.audit_rc not in (None, 0)))

    def problems(self) -> list[str]:
        out = [f"harness: {e}" for e in self.errors]
        out += [f"mismatch: {m}" for m in self.mismatches]
        out += [f"balance: {b}" for b in self.balance_diffs]
        out += [f"retry 409: {r}" for r in self.retry_409]
        out += [f"retry wrong answer: {r}" for r in self.retry_wrong]
        out += [f"orphan: {o}" for o in self.orphans]
        out += [f"tx_id: {t}" for t in self.tx_id_diffs]
        if self.duplicate_auth_txs:
            out.append(f"{self.duplicate_auth_txs} relayer txs for an already-submitted "
                       "authorization")
        if self.audit_differences or self.audit_rc not in (None, 0):
            out.append(f"audit: {self.audit} (exit {self.audit_rc})")
        return out

    def table(self) -> str:
        relayer = self.relayer
        rows = [
            ["payment requests (incl. 1 extra per key)", str(self.requests)],
            ["payments in the books", str(self.payments)],
            ["  succeeded / failed / not final",
             f"{self.succeeded} / {self.failed} / {self.not_final}"],
            ["  failed by code", ", ".join(f"{c} {n}" for c, n in self.failure_codes.items())
             or "-"],
            ["refused (4xx)", str(self.refused)],
            ["lost answers / 5xx / 409",
             " / ".join(str(self.answer_errors.get(k, 0)) for k in ("lost", "5xx", "409"))],
            ["chain: confirmed", str(self.chain.get("confirmed", 0))],
            ["chain: proven failed / never sent",
             f"{self.chain.get('failed', 0)} / {self.chain.get('never_sent', 0)}"],
            ["chain: may still land", str(self.chain.get("pending", 0))],
            ["MISMATCHES books != chain", str(len(self.mismatches))],
            ["balance differences", str(len(self.balance_diffs))],
            ["tx_id != settling tx", str(len(self.tx_id_diffs))],
        ]
        if relayer:
            rows += [
                ["relayer txs (mined)", str(relayer.get("txs", 0))],
                ["  dup txs per authorization", str(relayer.get("duplicate_authorization_txs", 0))],
                ["  reverted", str(relayer.get("reverted", 0))],
                ["  nonce fillers / senders",
                 f"{relayer.get('fillers', 0)} / {relayer.get('senders', 0)}"],
            ]
        rows += [
            ["nonce conflicts / rebroadcasts / bumps / fills (logs)",
             f"{self.logs.get('nonce_resync', 0)} / {self.logs.get('rebroadcast', 0)} / "
             f"{self.logs.get('bump', 0)} / {self.logs.get('filler', 0)}"],
            ["errors in server logs", str(self.logs.get("errors", 0))],
            ["zpay audit", self.audit],
        ]
        if self.kills or self.retries:
            rows += [
                ["kill -9 of zpay serve", str(self.kills)],
                ["idempotent retries / 409 / wrong",
                 f"{self.retries} / {len(self.retry_409)} / {len(self.retry_wrong)}"],
                ["orphaned anvil processes", str(len(self.orphans))],
            ]
        rows += [
            ["seconds: payments / until final / total",
             f"{self.pay_seconds:.1f} / {self.final_seconds:.1f} / {self.total_seconds:.1f}"],
            ["verdict", "books == chain" if self.ok else "DIFFERENCES"],
        ]
        return f"{self.label}: {self.config}\n" + table(["", ""], rows)


# --------------------------------------------------------------------------- processes


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def anvil_processes(marker: str) -> list[tuple[int, int | None, int | None]]:
    """(pid, ppid, port) of every anvil whose command line mentions `marker` (our data
    directory: zpay's embedded anvil runs with `--state <data_dir>/chains/...`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmd = _proc_cmdline(pid)
        if not cmd or not Path(cmd[0]).name.startswith("anvil"):
            continue
        if not any(marker in part for part in cmd):
            continue
        port = None
        if "--port" in cmd:
            with contextlib.suppress(ValueError, IndexError):
                port = int(cmd[cmd.index("--port") + 1])
        found.append((pid, _proc_ppid(pid), port))
    return found


class Proc:
    """One zpay process; restarts with the same command line."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path,
                 port: int | None = None) -> None:
        self.name, self.args, self.env, self.log_path, self.port = name, args, env, log, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.name} {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            if self.port is None:
                return
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s: {self.tail()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


# `zpay serve` under cProfile. uvicorn re-raises SIGTERM once it has shut down; a handler
# that raises SystemExit turns that into a normal exit, so the profile gets written.
_PROFILED = """
import cProfile, signal, sys
def _exit(*_):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, _exit)
path, sys.argv = sys.argv[1], ["zpay", *sys.argv[2:]]
profile = cProfile.Profile()
try:
    from zpay.cli import main
    profile.enable()
    main()
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(path)
"""


def zpay_cmd(*args: str) -> list[str]:
    return [str(VENV_BIN / "zpay"), *args]


def run_zpay(args: list[str], env: dict[str, str], timeout_s: float = 300,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(zpay_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout_s)
    if check and out.returncode != 0:
        raise RuntimeError(f"zpay {' '.join(args)} exited {out.returncode}: "
                           f"{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return out




# --------------------------------------------------------------------------- EVM referee


class EvmChain:
    """Raw JSON-RPC to the node: no zpay code between the referee and the chain."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(timeout=60)
        self._id = 0

    async def close(self) -> None:
        await self.http.aclose()

    async def rpc(self, method: str, params: list[Any]) -> Any:
        [result] = await self.batch([(method, params)])
        return result

    async def batch(self, calls: list[tuple[str, list[Any]]], chunk: int = 200) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(calls), chunk):
            body = []
            for method, params in calls[start:start + chunk]:
                self._id += 1
                body.append({"jsonrpc": "2.0", "id": self._id, "method": method,
                             "params": params})
            resp = await self.http.post(self.url, json=body)
            resp.raise_for_status()
            answers = {a["id"]: a for a in resp.json()}
            for req in body:
                answer = answers[req["id"]]
                if "error" in answer:
                    raise RuntimeError(f"{req['method']}: {answer['error']}")
                results.append(answer["result"])
        return results

    async def head(self) -> tuple[int, int]:
        block = await self.rpc("eth_getBlockByNumber", ["latest", False])
        return int(block["number"], 16), int(block["timestamp"], 16)

    async def authorization_used(self, token: str,
                                 pairs: list[tuple[str, bytes]]) -> list[bool]:
        calls = [("eth_call", [{"to": token, "data": "0x" + (
            SEL_AUTH_STATE + _word_address(a) + n).hex()}, "latest"]) for a, n in pairs]
        return [int(r, 16) != 0 for r in await self.batch(calls)]

    async def balances(self, token: str, owners: list[str]) -> list[int]:
        calls = [("eth_call", [{"to": token, "data": "0x" + (
            SEL_BALANCE_OF + _word_address(o)).hex()}, "latest"]) for o in owners]
        return [int(r, 16) for r in await self.batch(calls)]

    async def scan(self, token: str) -> dict[str, Any]:
        """Every block: relayer transactions, receipts, transactions per authorization
        (decoded from `transferWithAuthorization` calldata); and, from the token's own
        logs, which transfer used each authorization (however it was submitted)."""
        number, _ = await self.head()
        blocks = await self.batch([("eth_getBlockByNumber", [hex(n), True])
                                   for n in range(number + 1)], chunk=50)
        txs = [tx for block in blocks for tx in block["transactions"]]
        receipts = await self.batch([("eth_getTransactionReceipt", [tx["hash"]]) for tx in txs],
                                    chunk=100)
        by_auth: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        senders: Counter[str] = Counter()
        reverted: list[str] = []
        fillers = 0
        for tx, receipt in zip(txs, receipts, strict=True):
            sender = tx["from"].lower()
            senders[sender] += 1
            status = int(receipt["status"], 16)
            if status != 1:
                reverted.append(tx["hash"])
            data = bytes.fromhex(tx["input"][2:])
            to = (tx.get("to") or "").lower()
            if to == sender and not data and int(tx["value"], 16) == 0:
                fillers += 1
            if to == token.lower() and data[:4] == SEL_TWA and len(data) >= 4 + 32 * 9:
                words = [data[4 + 32 * i: 36 + 32 * i] for i in range(9)]
                by_auth[("0x" + words[0][12:].hex(), "0x" + words[5].hex())].append(
                    (tx["hash"], status))
        logs = await self.rpc("eth_getLogs", [{"address": token, "fromBlock": "0x0",
                                               "toBlock": hex(number)}])
        transfers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        used: list[tuple[tuple[str, str], str, int, int]] = []
        for log in logs:
            topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
            if topics and topics[0] == TOPIC_TRANSFER and len(topics) == 3:
                transfers[log["transactionHash"]].append({
                    "from": "0x" + topics[1][12:].hex(), "to": "0x" + topics[2][12:].hex(),
                    "value": int(log["data"], 16), "index": int(log["logIndex"], 16)})
            elif topics and topics[0] == TOPIC_AUTH_USED and len(topics) == 3:
                used.append((("0x" + topics[1][12:].hex(), "0x" + topics[2].hex()),
                             log["transactionHash"], int(log["logIndex"], 16),
                             int(log["blockNumber"], 16)))
        settled: dict[tuple[str, str], dict[str, Any]] = {}
        used_twice: list[tuple[str, str]] = []
        for key, tx_hash, index, block in used:
            if key in settled:
                used_twice.append(key)  # the token must make this impossible
            candidates = [t for t in transfers.get(tx_hash, []) if t["from"] == key[0]]
            best = min(candidates, key=lambda t: abs(t["index"] - index), default=None)
            settled[key] = {"tx": tx_hash, "block": block,
                            "to": best["to"] if best else "?",
                            "value": best["value"] if best else -1}
        duplicates = {k: v for k, v in by_auth.items() if len(v) > 1}
        return {"by_auth": by_auth, "settled": settled, "senders": senders, "reverted": reverted,
                "fillers": fillers, "duplicates": duplicates, "txs": len(txs),
                "used_twice": used_twice}


def _word_address(address: str) -> bytes:
    return b"\0" * 12 + bytes.fromhex(address[2:].lower())


def parse_evm_reference(reference: str) -> tuple[str, bytes, int]:
    """`<from>:0x<nonce>:<validBefore>` (zpay.chains.evm._make_reference)."""
    parts = reference.split(":")
    if len(parts) < 3 or parts[0] == "tx":
        raise ValueError(f"not an EIP-3009 authorization reference: {reference!r}")
    return parts[0], bytes.fromhex(parts[1].removeprefix("0x")), int(parts[2])


# --------------------------------------------------------------------------- the run


@dataclass
class Key:
    id: str
    agent_token: str
    address: str
    user_wallet: str


@dataclass
class Shot:
    idem: str
    agent: int
    extra: bool
    status_code: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    retry_code: int | None = None
    retry_body: dict[str, Any] | None = None


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.report = Report(label=cfg.label or "run", config=cfg.describe())
        self.tmp = Path(tempfile.mkdtemp(prefix="zpay-soak-"))
        self.data_dir = self.tmp / "data"
        self.logs = self.tmp / "logs"
        self.logs.mkdir(parents=True)
        self.pg_name: str | None = None
        self.anvil: Any = None
        self.burner: subprocess.Popen[bytes] | None = None
        self.serves: list[Proc] = []
        self.workers: list[Proc] = []
        self.env: dict[str, str] = {}
        self.api_key = ""
        self.keys: list[Key] = []
        self.recipients: list[str] = []
        self.shots: list[Shot] = []
        self._rr = 0
        self._answered = 0
        self._orphan_pids: set[int] = set()

    # ---------------------------------------------------------------- set-up / tear-down

    def log(self, message: str) -> None:
        if not self.cfg.quiet:
            print(f"[{self.report.label} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def _database_url(self) -> str:
        if self.cfg.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.data_dir / 'zpay.db'}"
        self.pg_name = f"zpay_soak_{secrets.token_hex(4)}"
        psql(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        psql(f'CREATE DATABASE "{self.pg_name}"')
        return f"{PG}/{self.pg_name}"

    def setup(self) -> None:
        cfg = self.cfg
        self.data_dir.mkdir(parents=True)
        # Nothing from the caller's ZPAY_* settings (but where anvil is) leaks into the run.
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("ZPAY_") or k == "ZPAY_ANVIL_BIN"}
        env = {**inherited,
               "ZPAY_DATA_DIR": str(self.data_dir),
               "ZPAY_DATABASE_URL": self._database_url(),
               "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
               "ZPAY_CHAINS": cfg.chain, "ZPAY_DEFAULT_CHAIN": cfg.chain,
               "ZPAY_LOG_LEVEL": "WARNING", "ZPAY_DB_POOL_SIZE": "10",
               "PYTHONUNBUFFERED": "1"}
        if cfg.chain == "evm-local" and cfg.anvil == "external":
            from zpay.chains.anvil import AnvilProcess

            self.anvil = AnvilProcess(block_time_s=cfg.block_time_s, state_path=None)
            self.anvil.start()
            env["ZPAY_RPC_URL_EVM_LOCAL"] = self.anvil.rpc_url
            self.log(f"anvil --block-time {cfg.block_time_s} at {self.anvil.rpc_url} "
                     f"(pid {self.anvil.pid})")
        self.env = env
        run_zpay(["db", "upgrade"], env)
        created = json.loads(run_zpay(["merchants", "create", "--name", "soak", "--json"],
                                      env).stdout)
        self.api_key = created["api_key"]
        scheduler = "0" if cfg.workers > 0 else "1"
        for i in range(cfg.replicas):
            port = free_port()
            args = zpay_cmd("serve", "--port", str(port))
            if cfg.profile and i == 0:
                args = [sys.executable, "-c", _PROFILED, str(self.tmp / "serve-0.prof"),
                        *args[1:]]
            self.serves.append(Proc(f"serve-{i}", args, {**env, "ZPAY_SCHEDULER": scheduler},
                                    self.logs / f"serve-{i}.log", port))
        for i in range(cfg.workers):
            self.workers.append(Proc(f"worker-{i}", zpay_cmd("worker"),
                                     {**env, "ZPAY_SCHEDULER": "1"},
                                     self.logs / f"worker-{i}.log"))
        # The first server creates the relayer key, deploys the token, pairs the chain;
        # the others then start together.
        self.serves[0].start()
        self.serves[0].wait_ready()
        for proc in [*self.serves[1:], *self.workers]:
            proc.start()
        for proc in [*self.serves[1:], *self.workers]:
            proc.wait_ready()
            if proc.port is None:
                time.sleep(1.0)
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        self.log(f"{cfg.replicas} serve + {cfg.workers} worker up; data in {self.tmp}")
        if cfg.load:
            self.burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def teardown(self) -> None:
        if self.burner is not None:
            self.burner.kill()
            self.burner.wait()
            self.burner = None
        for proc in [*self.workers, *self.serves]:
            proc.stop()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
        for pid, _ppid, _port in anvil_processes(str(self.data_dir)):
            # Started (indirectly) by this run and left behind: end them by their id.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.pg_name is not None and not self.cfg.keep:
            with contextlib.suppress(subprocess.CalledProcessError):
                psql(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        if not self.cfg.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- HTTP

    def _next_url(self) -> str:
        self._rr += 1
        return self.serves[self._rr % len(self.serves)].url

    async def prepare_keys(self, http: httpx.AsyncClient) -> None:
        from eth_account import Account
        from solders.keypair import Keypair

        from zpay.client.wallet import EvmWallet, SolanaWallet

        cfg, base = self.cfg, self.serves[0].url
        headers = {"Authorization": f"Bearer {self.api_key}"}
        solana = cfg.chain == "solana-local"

        async def one(i: int) -> Key:
            wallet = SolanaWallet.generate() if solana else EvmWallet.generate()
            amount = str(cfg.payments_per_agent)
            resp = await http.post(base + "/v1/faucet", headers=headers, json={
                "wallet": wallet.address, "amount": amount, "chain": cfg.chain})
            _raise(resp, "faucet")
            agent = (await http.post(base + "/v1/agents", headers=headers,
                                     json={"name": f"soak-{i}"})).json()
            key = await http.post(base + "/v1/session-keys", headers=headers, json={
                "agent_id": agent["id"], "user_wallet": wallet.address, "max_amount": amount,
                "chain": cfg.chain, "expires_in_seconds": 86400})
            _raise(key, "session key")
            body = key.json()
            resp = await http.post(base + f"/v1/session-keys/{body['id']}/approval",
                                   headers=headers, json=wallet.sign_approval(body))
            _raise(resp, "approval")
            status = resp.json()
            if status["status"] != "active" or Decimal(status["funded_amount"]) != Decimal(amount):
                raise RuntimeError(f"key {body['id']} not funded: {status}")
            return Key(body["id"], agent["token"], status["session_key_address"], wallet.address)

        self.keys = list(await asyncio.gather(*(one(i) for i in range(cfg.agents))))
        self.recipients = [str(Keypair().pubkey()) if solana else Account.create().address
                           for _ in range(cfg.recipients)]

    async def _pay(self, http: httpx.AsyncClient, shot: Shot, key: Key, recipient: str,
                   *, retry: bool = False) -> None:
        """One payment request. A refused connection never reached a server: try again
        (same Idempotency-Key) on the next replica; a connection lost mid-request leaves
        the outcome unknown (retried at the end)."""
        deadline = time.monotonic() + 180
        code: int | None
        body: dict[str, Any] | None
        error: str | None
        while True:
            url = self._next_url()
            try:
                resp = await http.post(url + "/v1/payments", headers={
                    "Authorization": f"Bearer {key.agent_token}", "Idempotency-Key": shot.idem},
                    json={"session_key_id": key.id, "amount": "1", "recipient": recipient})
            except httpx.ConnectError as exc:
                if time.monotonic() > deadline:
                    code, body, error = None, None, f"connect: {exc}"
                    break
                await asyncio.sleep(0.2)
                continue
            except httpx.HTTPError as exc:
                code, body, error = None, None, f"{type(exc).__name__}: {exc}"
                break
            try:
                body = resp.json()
            except ValueError:
                body = {"raw": resp.text[:200]}
            code, error = resp.status_code, None
            break
        if retry:
            shot.retry_code, shot.retry_body = code, body
        else:
            shot.status_code, shot.body, shot.error = code, body, error
            self._answered += 1

    async def fire(self, http: httpx.AsyncClient) -> None:
        cfg = self.cfg
        per_agent: list[list[Shot]] = []
        for a in range(cfg.agents):
            shots = [Shot(f"soak-{a}-{j}-{uuid.uuid4().hex[:8]}", a, False)
                     for j in range(cfg.payments_per_agent)]
            per_agent.append(shots)
            self.shots += shots

        async def agent(a: int) -> None:
            queue = iter(enumerate(per_agent[a]))

            async def lane() -> None:
                for j, shot in queue:
                    await self._pay(http, shot, self.keys[a],
                                    self.recipients[(a + j) % len(self.recipients)])

            await asyncio.gather(*(lane() for _ in range(cfg.inflight_per_agent)))
            if cfg.extra_payment:
                extra = Shot(f"soak-{a}-extra-{uuid.uuid4().hex[:8]}", a, True)
                self.shots.append(extra)
                await self._pay(http, extra, self.keys[a], self.recipients[0])

        async def progress() -> None:
            started = time.monotonic()
            while True:
                await asyncio.sleep(15)
                self.log(f"{self._answered}/{len(self.shots)} answered after "
                         f"{time.monotonic() - started:.0f}s")

        ticker = asyncio.create_task(progress())
        tasks: list[Awaitable[Any]] = [asyncio.gather(*(agent(a) for a in range(cfg.agents)))]
        if cfg.kills:
            tasks.append(self._killer())
        try:
            await asyncio.gather(*tasks)
        finally:
            ticker.cancel()

    async def _killer(self) -> None:
        cfg = self.cfg
        total = cfg.agents * cfg.payments_per_agent
        for k in range(cfg.kills):
            target = total * (k + 1) // (cfg.kills + 1)
            while self._answered < target:
                await asyncio.sleep(0.05)
            proc = self.serves[k % len(self.serves)]
            children = {pid for pid, ppid, _ in anvil_processes(str(self.data_dir))
                        if ppid == proc.pid}
            self.log(f"kill -9 {proc.name} (pid {proc.pid}) after {self._answered} answers")
            await asyncio.to_thread(proc.kill9)
            self.report.kills += 1
            await asyncio.sleep(0.5)
            if cfg.embedded_anvil:
                # The anvil it started must follow it (it may first write its state).
                waited = time.monotonic() + ORPHAN_AFTER_S
                survivors = children
                while survivors and time.monotonic() < waited:
                    await asyncio.sleep(0.1)
                    alive = {p for p, _, _ in anvil_processes(str(self.data_dir))}
                    survivors = {p for p in children if p in alive}
                for pid in sorted(survivors - self._orphan_pids):
                    self._orphan_pids.add(pid)
                    self.report.orphans.append(
                        f"anvil pid {pid} (embedded, started by killed {proc.name} pid "
                        f"{proc.pid}) still running {ORPHAN_AFTER_S:.0f} s after its server died")
            await asyncio.to_thread(proc.start)
            await asyncio.to_thread(proc.wait_ready)
            self.log(f"{proc.name} restarted (pid {proc.pid})")

    async def retry_all(self, http: httpx.AsyncClient) -> None:
        by_index = dict(enumerate(self.keys))
        sem = asyncio.Semaphore(16)

        async def one(shot: Shot) -> None:
            async with sem:
                await self._pay(http, shot, by_index[shot.agent], self._recipient_of(shot),
                                retry=True)

        await asyncio.gather(*(one(s) for s in self.shots))
        self.report.retries = len(self.shots)

    def _recipient_of(self, shot: Shot) -> str:
        if shot.extra:
            return self.recipients[0]
        j = int(shot.idem.split("-")[2])
        return self.recipients[(shot.agent + j) % len(self.recipients)]

    async def list_payments(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["starting_after"] = cursor
            resp = await http.get(self._live_url() + "/v1/payments", params=params,
                                  headers={"Authorization": f"Bearer {self.api_key}"})
            _raise(resp, "list payments")
            page = resp.json()
            out += page["data"]
            if not page["has_more"]:
                return out
            cursor = page["next_cursor"]

    def _live_url(self) -> str:
        for proc in self.serves:
            if proc.alive():
                return proc.url
        raise RuntimeError("no zpay serve is running")

    # ---------------------------------------------------------------- books

    async def books(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.env["ZPAY_DATABASE_URL"])
        try:
            async with engine.connect() as conn:
                # SELECT *: the schema is moving; the columns read below are the contract.
                payments = [dict(r._mapping) for r in (await conn.execute(text(
                    "SELECT * FROM payments"))).all()]
                keys = [dict(r._mapping) for r in (await conn.execute(text(
                    "SELECT * FROM session_keys"))).all()]
        finally:
            await engine.dispose()
        for row in payments:
            row["amount"] = int(row["amount"])
        for row in keys:
            for col in ("funded_amount", "spent_amount", "held_amount", "refunded_amount"):
                row[col] = int(row[col])
        return payments, keys

    # ---------------------------------------------------------------- waiting

    def _evm_url(self) -> str:
        if self.anvil is not None:
            return str(self.anvil.rpc_url)
        # zpay's embedded anvil: the one the running server started.
        serve_pid = self.serves[0].pid
        for _pid, ppid, port in anvil_processes(str(self.data_dir)):
            if ppid == serve_pid and port is not None:
                return f"http://127.0.0.1:{port}"
        raise RuntimeError(f"no anvil child of zpay serve (pid {serve_pid}) found")

    async def evm_verdicts(self, payments: list[dict[str, Any]],
                           token: str) -> dict[str, tuple[str, str]]:
        """payment id -> (verdict, detail) from authorizationState and block time alone."""
        from zpay.chains.evm_tx import payment_nonce

        chain = EvmChain(self._evm_url())
        try:
            _, block_time = await chain.head()
            key_address = {k["id"]: k["address"] for k in (await self.books())[1]}
            pairs, metas = [], []
            for p in payments:
                if p["tx_reference"]:
                    sender, nonce, valid_before = parse_evm_reference(p["tx_reference"])
                else:
                    # No reference: derive the nonce anyway, the chain must not know it.
                    sender = key_address[p["session_key_id"]]
                    nonce = payment_nonce(f"{p['session_key_id']}:{p['id']}")
                    valid_before = None
                pairs.append((sender, nonce))
                metas.append(valid_before)
            used = await chain.authorization_used(token, pairs)
        finally:
            await chain.close()
        out = {}
        for p, is_used, valid_before in zip(payments, used, metas, strict=True):
            if is_used:
                out[p["id"]] = ("confirmed", "authorizationState used")
            elif valid_before is None:
                out[p["id"]] = ("never_sent", "no reference; nonce unused")
            elif block_time >= valid_before:
                out[p["id"]] = ("failed", f"unused at block time {block_time} >= validBefore "
                                          f"{valid_before}")
            else:
                out[p["id"]] = ("pending", f"unused, block time {block_time} < validBefore "
                                           f"{valid_before}")
        return out

    async def wait_final(self, http: httpx.AsyncClient) -> None:
        cfg = self.cfg
        started = time.monotonic()
        deadline = started + cfg.final_timeout_s
        definitive_since: float | None = None
        last_check = 0.0
        while True:
            listed = await self.list_payments(http)
            open_ids = {p["id"] for p in listed if p["status"] not in FINAL}
            if not open_ids:
                break
            now = time.monotonic()
            if now > deadline:
                self.log(f"gave up waiting: {len(open_ids)} payments not final after "
                         f"{cfg.final_timeout_s:.0f}s")
                break
            if cfg.chain == "evm-local" and now - last_check > 3:
                # Bounded by chain evidence: once the chain has decided every open payment
                # (authorization used, or unused past validBefore) the books have
                # `settle_grace_s` to follow; waiting longer would only hide a defect.
                last_check = now
                payments, keys = await self.books()
                token = keys[0]["token_address"]
                still = [p for p in payments if p["id"] in open_ids]
                verdicts = await self.evm_verdicts(still, token)
                if all(v[0] in ("confirmed", "failed") for v in verdicts.values()):
                    definitive_since = definitive_since or now
                    if now - definitive_since > cfg.settle_grace_s:
                        self.log(f"the chain decided all {len(open_ids)} open payments "
                                 f"{cfg.settle_grace_s:.0f}s ago; the books did not follow")
                        break
                else:
                    definitive_since = None
            await asyncio.sleep(1.0)
        self.report.final_seconds += time.monotonic() - started

    # ---------------------------------------------------------------- judging

    def _count_answers(self) -> None:
        r = self.report
        r.requests = len(self.shots)
        for shot in self.shots:
            code = shot.status_code
            if code is None:
                r.answer_errors["lost"] += 1
            elif code == 409:
                r.answer_errors["409"] += 1
            elif code >= 500:
                r.answer_errors["5xx"] += 1
            elif code >= 400:
                r.refused += 1
        # The extra payment must be refused when every earlier payment of its key holds
        # or spent its 1 USDC: then the key's balance is exactly used up.
        regular: dict[int, list[Shot]] = defaultdict(list)
        for shot in self.shots:
            if not shot.extra:
                regular[shot.agent].append(shot)
        for shot in self.shots:
            if not shot.extra or shot.status_code not in (201, 202):
                continue
            if all(s.status_code in (201, 202) and (s.body or {}).get("status") != "failed"
                   for s in regular[shot.agent]):
                r.extra_allowed += 1
                r.errors.append(f"payment {(shot.body or {}).get('id')} beyond the funded "
                                f"amount allowed: {shot.body}")

    def _judge_retries(self, before: dict[str, tuple[str, str]]) -> None:
        """`before`: idempotency key -> (payment id, status) in the books, all final, just
        before the retries. A retry must answer that payment and that status."""
        for shot in self.shots:
            expected = before.get(shot.idem)
            got = shot.retry_body or {}
            if shot.retry_code == 409:
                self.report.retry_409.append(
                    f"{shot.idem}: 409 {got.get('code')} (books: {expected})")
                continue
            if shot.retry_code is None:
                self.report.retry_wrong.append(f"{shot.idem}: no answer")
                continue
            if expected is None:
                continue  # never reached the books: a new payment or a refusal is right
            if got.get("id") != expected[0] or got.get("status") != expected[1]:
                self.report.retry_wrong.append(
                    f"{shot.idem}: answered {shot.retry_code} {got.get('id')} "
                    f"{got.get('status') or got.get('code')}; books say {expected[0]} "
                    f"{expected[1]}")

    def _judge_payments(self, payments: list[dict[str, Any]],
                        verdicts: dict[str, tuple[str, str]],
                        settled: dict[str, dict[str, Any]] | None) -> None:
        r = self.report
        r.payments = len(payments)
        sent = {shot.idem for shot in self.shots}
        per_idem = Counter(p.get("idempotency_key") for p in payments)
        for idem, n in per_idem.items():
            if n > 1:
                r.mismatches.append(f"{n} payments in the books for Idempotency-Key {idem}: "
                                    + ", ".join(p["id"] for p in payments
                                                if p.get("idempotency_key") == idem))
            elif idem not in sent:
                r.mismatches.append(f"a payment the harness never asked for (key {idem})")
        for p in payments:
            status = p["status"]
            verdict, detail = verdicts[p["id"]]
            r.chain[verdict] += 1
            if status == "succeeded":
                r.succeeded += 1
            elif status == "failed":
                r.failed += 1
                r.failure_codes[str(p.get("failure_code"))] += 1
            else:
                r.not_final += 1
            what = (f"{p['id']} books={status} failure_code={p['failure_code']} "
                    f"chain={verdict} ({detail}) ref={p['tx_reference']}")
            if status == "succeeded" and verdict != "confirmed":
                r.mismatches.append("books succeeded, chain did not move: " + what)
            elif status == "failed" and verdict == "confirmed":
                r.mismatches.append("books failed, chain moved the money: " + what)
            elif status == "failed" and verdict == "pending":
                r.mismatches.append("books failed before the chain proved it: " + what)
            elif status not in FINAL:
                r.mismatches.append("books not final: " + what)
            if settled is not None and verdict == "confirmed":
                tx = settled.get(p["id"])
                if tx is None:
                    r.mismatches.append("authorization used but no transfer log found: " + what)
                    continue
                if tx["value"] != p["amount"] or tx["to"].lower() != p["recipient"].lower():
                    r.mismatches.append(f"chain moved {tx['value']} to {tx['to']} in {tx['tx']}"
                                        f", books say {p['amount']} to {p['recipient']}: {what}")
                if status == "succeeded" and (p["tx_id"] or "").lower() != tx["tx"].lower():
                    r.tx_id_diffs.append(f"{p['id']} tx_id={p['tx_id']} settling tx={tx['tx']}")

    def _judge_balances(self, payments: list[dict[str, Any]], keys: list[dict[str, Any]],
                        key_balances: list[int], recipient_balances: list[int],
                        user_balances: list[int]) -> None:
        r = self.report
        # Each user got exactly the funded amount from the faucet and approved all of it:
        # what is left is what came back (refunds).
        refunded = {k["id"]: k["refunded_amount"] for k in keys}
        for ours, on_chain in zip(self.keys, user_balances, strict=True):
            if on_chain != refunded.get(ours.id, 0):
                r.balance_diffs.append(f"user wallet {ours.user_wallet} of {ours.id}: chain "
                                       f"{on_chain}, books refunded {refunded.get(ours.id)}")
        paid: Counter[str] = Counter()
        for p in payments:
            if p["status"] == "succeeded":
                paid[p["recipient"].lower()] += p["amount"]
        for address, on_chain in zip(self.recipients, recipient_balances, strict=True):
            if on_chain != paid[address.lower()]:
                r.balance_diffs.append(f"recipient {address}: chain {on_chain}, books' succeeded "
                                       f"payments {paid[address.lower()]}")
        for key, on_chain in zip(keys, key_balances, strict=True):
            books = (key["funded_amount"] - key["spent_amount"] - key["refunded_amount"])
            if key["funded_amount"] != self.cfg.payments_per_agent * USDC:
                r.balance_diffs.append(f"session key {key['id']}: funded {key['funded_amount']}"
                                       f", approved {self.cfg.payments_per_agent * USDC}")
            if on_chain != books:
                r.balance_diffs.append(
                    f"session key {key['id']} ({key['address']}, {key['status']}): chain "
                    f"{on_chain}, books funded-spent-refunded {books} (held "
                    f"{key['held_amount']})")
            if key["held_amount"] != 0 and not r.not_final:
                r.balance_diffs.append(f"session key {key['id']}: {key['held_amount']} still "
                                       "held with every payment final")

    async def judge_evm(self) -> None:
        payments, keys = await self.books()
        token = keys[0]["token_address"]
        verdicts = await self.evm_verdicts(payments, token)
        chain = EvmChain(self._evm_url())
        try:
            facts = await chain.scan(token)
            key_balances = await chain.balances(token, [k["address"] for k in keys])
            recipient_balances = await chain.balances(token, self.recipients)
            user_balances = await chain.balances(token, [k.user_wallet for k in self.keys])
        finally:
            await chain.close()
        # The settling transfer of each payment, found by its authorization in the blocks.
        by_key: dict[tuple[str, str], str] = {}
        for p in payments:
            if p["tx_reference"]:
                sender, nonce, _ = parse_evm_reference(p["tx_reference"])
                by_key[(sender.lower(), "0x" + nonce.hex())] = p["id"]
        settled = {by_key[k]: v for k, v in facts["settled"].items() if k in by_key}
        r = self.report
        r.relayer = {
            "txs": facts["txs"],
            "duplicate_authorization_txs": sum(len(v) - 1 for v in facts["duplicates"].values()),
            "reverted": len(facts["reverted"]),
            "fillers": facts["fillers"],
            "senders": len(facts["senders"]),
        }
        for auth in facts["used_twice"]:
            r.errors.append(f"authorization {auth} used twice on chain (token broken?)")
        for auth, txs in list(facts["duplicates"].items())[:20]:
            r.errors.append(f"authorization {auth} (payment {by_key.get(auth, '?')}) carried by "
                            f"{len(txs)} relayer txs: {txs}")
        self._judge_payments(payments, verdicts, settled)
        self._judge_balances(payments, keys, key_balances, recipient_balances, user_balances)

    async def judge_solana(self) -> None:
        """After the server stopped (LiteSVM lives in its process): open the chain state it
        left on disk and ask it."""
        from solders.signature import Signature
        from solders.transaction import Transaction

        from zpay.chains.protocol import TransferState
        from zpay.chains.registry import get_network
        from zpay.chains.solana import SolanaAdapter

        payments, keys = await self.books()
        adapter = SolanaAdapter.local(get_network("solana-local"),
                                      state_dir=self.data_dir / "chains" / "solana-local")
        try:
            local = adapter.local_chain
            assert local is not None
            token = adapter.token("USDC")
            verdicts: dict[str, tuple[str, str]] = {}
            for p in payments:
                if not p["tx_reference"]:
                    verdicts[p["id"]] = ("never_sent", "no signature recorded")
                    continue
                status = local.signature_status(Signature.from_string(p["tx_reference"]))
                if status.state is TransferState.CONFIRMED:
                    verdicts[p["id"]] = ("confirmed", "signature processed, ok")
                elif status.state is TransferState.FAILED:
                    verdicts[p["id"]] = ("failed", f"processed with error {status.error}")
                elif not p.get("tx_payload"):
                    verdicts[p["id"]] = ("pending", "unknown signature, no payload recorded")
                else:
                    blockhash = Transaction.from_bytes(p["tx_payload"]).message.recent_blockhash
                    if local.is_blockhash_valid(blockhash):
                        verdicts[p["id"]] = ("pending", "unknown signature, blockhash valid")
                    else:
                        verdicts[p["id"]] = ("failed", "unknown signature, blockhash lapsed")
                if verdicts[p["id"]][0] == "confirmed" and p["status"] == "succeeded" and (
                        p["tx_id"] != p["tx_reference"]):
                    self.report.tx_id_diffs.append(
                        f"{p['id']} tx_id={p['tx_id']} signature={p['tx_reference']}")
            key_balances = [await adapter.balance(k["address"], token) for k in keys]
            recipient_balances = [await adapter.balance(a, token) for a in self.recipients]
            user_balances = [await adapter.balance(k.user_wallet, token) for k in self.keys]
        finally:
            await adapter.close()
        self._judge_payments(payments, verdicts, None)
        self._judge_balances(payments, keys, key_balances, recipient_balances, user_balances)

    def _print_profile(self) -> None:
        import io
        import pstats

        path = self.tmp / "serve-0.prof"
        if not path.exists():
            self.log("no profile written (the server did not exit cleanly)")
            return
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue())

    def scan_logs(self) -> None:
        counts: Counter[str] = Counter()
        samples: list[str] = []
        # The relayer's own warnings (wording of the old and the journal-based relayer).
        patterns = {"nonce_resync": re.compile(r"relayer nonce \d+ (refused|is taken)"),
                    "rebroadcast": re.compile(r"was dropped; re-broadcast"),
                    "bump": re.compile(r"replacing it with higher fees|replaced with higher fees"),
                    "filler": re.compile(r"filled with a no-op"),
                    "errors": re.compile(r"\bERROR\b|Traceback")}
        for path in sorted(self.logs.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                for name, pattern in patterns.items():
                    if pattern.search(line):
                        counts[name] += 1
                        if name == "errors" and len(samples) < 5:
                            samples.append(f"{path.name}: {line[:300]}")
        self.report.logs = dict(counts)
        self.report.log_samples = samples

    def audit(self) -> None:
        probe = run_zpay(["audit", "--help"], self.env, check=False)
        if probe.returncode != 0:
            self.report.audit = "n/a (no `zpay audit` command)"
            return
        out = run_zpay(["audit"], self.env, check=False, timeout_s=600)
        text = (out.stdout + out.stderr).strip()
        match = re.search(r"audited\s+(\d+)\s+wallets?:?(.*?(\d+)\s+differences?[^\n]*)",
                          text, re.S)
        self.report.audit_rc = out.returncode
        if match:
            self.report.audit_differences = int(match.group(3))
            self.report.audit = (f"{match.group(1)} wallets:{match.group(2)} "
                                 f"(exit {out.returncode})")
            if out.returncode != 0:
                self.report.audit_detail = text[-3000:]
        else:
            self.report.audit = f"exit {out.returncode}: {text[-300:]!r}"
            self.report.audit_detail = text[-3000:]

    # ---------------------------------------------------------------- the whole run

    async def _drive(self) -> None:
        cfg = self.cfg
        limits = httpx.Limits(max_connections=cfg.agents * cfg.inflight_per_agent + 8)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            self.log(f"funding {cfg.agents} session keys with {cfg.payments_per_agent} USDC")
            await self.prepare_keys(http)
            self.log(f"firing {cfg.agents} x {cfg.payments_per_agent} payments "
                     f"(+{cfg.agents if cfg.extra_payment else 0} extra)")
            started = time.monotonic()
            await self.fire(http)
            self.report.pay_seconds = time.monotonic() - started
            self._count_answers()
            self.log(f"answered in {self.report.pay_seconds:.1f}s; waiting until final")
            await self.wait_final(http)
            if cfg.kills or cfg.retry_all:
                payments, _ = await self.books()
                before = {p["idempotency_key"]: (p["id"], p["status"]) for p in payments
                          if p["idempotency_key"] and p["status"] in FINAL}
                self.log(f"retrying all {len(self.shots)} Idempotency-Keys once")
                await self.retry_all(http)
                self._judge_retries(before)
                await self.wait_final(http)
            if cfg.chain == "evm-local":
                self.log("judging with the chain")
                await self.judge_evm()

    def run(self) -> Report:
        started = time.monotonic()
        try:
            self.setup()
            asyncio.run(self._drive())
            for proc in [*self.workers, *self.serves]:
                proc.stop()
            if self.cfg.embedded_anvil:
                waited = time.monotonic() + ORPHAN_AFTER_S
                while anvil_processes(str(self.data_dir)) and time.monotonic() < waited:
                    time.sleep(0.1)
                for pid, ppid, _ in anvil_processes(str(self.data_dir)):
                    if pid not in self._orphan_pids:
                        self._orphan_pids.add(pid)
                        self.report.orphans.append(
                            f"anvil pid {pid} (parent {ppid}) still running after every "
                            "zpay process stopped")
            if self.cfg.profile:
                self._print_profile()
            if self.cfg.chain == "solana-local":
                self.log("judging with the chain (LiteSVM state on disk)")
                asyncio.run(self.judge_solana())
            self.audit()
            self.scan_logs()
        except Exception as exc:  # a broken run is a result too: report it, clean up
            self.report.errors.append(f"{type(exc).__name__}: {exc}"[:3000])
            self.scan_logs()
        finally:
            self.teardown()
            self.report.total_seconds = time.monotonic() - started
        return self.report


def _raise(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 300:
        raise RuntimeError(f"{what}: {resp.status_code} {resp.text[:500]}")


def run_soak(cfg: SoakConfig) -> Report:
    return Soak(cfg).run()


# --------------------------------------------------------------------------- CLI


def summary(reports: list[Report]) -> str:
    rows = []
    for r in reports:
        rows.append([r.label, str(r.payments), str(r.succeeded), str(r.failed), str(r.not_final),
                     str(r.chain.get("confirmed", 0)), str(len(r.mismatches)),
                     str(len(r.balance_diffs)), str(r.duplicate_auth_txs),
                     str(r.relayer.get("reverted", 0)), str(r.logs.get("nonce_resync", 0)),
                     (f"{r.audit_differences} diff, rc {r.audit_rc}"
                      if r.audit_differences is not None else r.audit[:16]),
                     f"{len(r.retry_409)}/{len(r.retry_wrong)}", str(len(r.orphans)),
                     f"{r.total_seconds:.0f}", "ok" if r.ok else "DIFF"])
    return table(["run", "payments", "succ", "failed", "open", "chain ok", "mismatch",
                  "bal diff", "dup tx", "reverted", "resyncs", "audit", "409/wrong", "orphans",
                  "s", "verdict"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", default="evm-local", choices=["evm-local", "solana-local"])
    parser.add_argument("--anvil", default="external", choices=["external", "embedded"],
                        help="evm-local: an external anvil --block-time (default) or the one "
                        "zpay embeds")
    parser.add_argument("--agents", type=int, default=None, help="default 16 (8 with --kill)")
    parser.add_argument("--payments", type=int, default=50, help="per agent (= USDC funded)")
    parser.add_argument("--inflight", type=int, default=2, help="concurrent requests per agent")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--database", default="postgres", choices=["sqlite", "postgres"])
    parser.add_argument("--load", action="store_true", help="burn one core meanwhile")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kill", type=int, default=0, help="kill -9 a zpay serve N times")
    parser.add_argument("--block-time", type=int, default=1)
    parser.add_argument("--retry-all", action="store_true",
                        help="retry every Idempotency-Key once at the end (always with --kill)")
    parser.add_argument("--final-timeout", type=float, default=180.0)
    parser.add_argument("--no-extra", action="store_true", help="no payment beyond the funds")
    parser.add_argument("--keep", action="store_true", help="keep data dir and database")
    parser.add_argument("--profile", action="store_true",
                        help="run the first zpay serve under cProfile and print its hot spots")
    parser.add_argument("--show", type=int, default=15, help="differences to print per run")
    args = parser.parse_args(argv)
    agents = args.agents if args.agents is not None else (8 if args.kill else 16)
    reports = []
    for n in range(args.runs):
        cfg = SoakConfig(chain=args.chain, anvil=args.anvil, agents=agents,
                         payments_per_agent=args.payments, inflight_per_agent=args.inflight,
                         database=args.database, load=args.load, replicas=args.replicas,
                         workers=args.workers, kills=args.kill, block_time_s=args.block_time,
                         retry_all=args.retry_all, final_timeout_s=args.final_timeout,
                         extra_payment=not args.no_extra, keep=args.keep,
                         profile=args.profile,
                         label=f"run {n + 1}/{args.runs}")
        report = run_soak(cfg)
        reports.append(report)
        print()
        print(report.table())
        problems = report.problems()
        for line in problems[:args.show]:
            print("  !", line)
        if len(problems) > args.show:
            print(f"  ! … and {len(problems) - args.show} more")
        for line in report.log_samples:
            print("  log:", line)
        if report.audit_detail:
            print("  audit output:\n    " + "\n    ".join(report.audit_detail.splitlines()[-20:]))
        print(flush=True)
    print("summary\n" + summary(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
