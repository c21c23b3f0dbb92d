"""`zpay serve --workers N`: N server processes sharing one listening socket.

The socket is bound once, then the process forks (before any event loop, database
connection or chain exists, so nothing is shared by accident); each worker builds its own
context and serves the inherited socket on uvloop. SIGTERM/SIGINT are passed on; a worker
that fails to start stops the others.

Several processes need what several replicas need: PostgreSQL (SQLite admits one writer;
its discipline stays one process) and one chain they all see. The embedded `solana-local`
is one: its state directory is shared, every process keeping a replica that follows the
ledger (`zpay.chains.solana_local`). An embedded `evm-local` is an anvil each process
would start for itself: a local multi-process setup points `ZPAY_RPC_URL_EVM_LOCAL` at one
anvil that all share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from zpay.chains.protocol import Family
from zpay.chains.registry import get_network
from zpay.settings import Settings

log = logging.getLogger(__name__)


class CannotFork(RuntimeError):
    """`--workers` > 1 asked where one process must own the state."""


def check_multiprocess(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite"):
        raise CannotFork("--workers > 1 needs PostgreSQL: SQLite admits one writer process "
                         "(set ZPAY_DATABASE_URL to a PostgreSQL database, or run one worker)")
    embedded = [name for name in settings.chains
                if (spec := get_network(name)).info.local and not spec.rpc_url
                and spec.info.family != Family.SOLANA]  # solana-local's ledger is shared
    if embedded:
        raise CannotFork(
            f"--workers > 1 needs chains reached over RPC; {', '.join(embedded)} is embedded "
            f"in one process (point {', '.join(_rpc_env(n) for n in embedded)} at a shared "
            "node: anvil)")


def _rpc_env(name: str) -> str:
    return "ZPAY_RPC_URL_" + name.upper().replace("-", "_")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop (uvicorn[standard] brings it), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def serve_forked(workers: int, host: str, port: int,
                 serve: Callable[[socket.socket], Coroutine[Any, Any, None]]) -> int:
    sock = socket.create_server((host, port), backlog=2048)
    sock.set_inheritable(True)
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker
            code = 0
            try:
                run_loop(serve(sock))
            except BaseException:
                log.exception("zpay worker %s stopped", os.getpid())
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()

    def pass_on(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    failed = False
    while children:
        pid, status = os.wait()
        children.remove(pid)
        if os.waitstatus_to_exitcode(status) != 0 and not failed:
            failed = True
            pass_on(signal.SIGTERM, None)  # one could not start or died: stop them all
    return 1 if failed else 0
