"""Find and run anvil, the local EVM node behind the `evm-local` network.

anvil comes from the npm registry (`@foundry-rs/anvil`, pinned in the root package.json).
That package is only a node wrapper; the binary ships in a per-platform optional
dependency, `@foundry-rs/anvil-<os>-<arch>/bin/anvil`, and when npm skipped it the wrapper's
postinstall downloads it next to itself as `@foundry-rs/anvil/anvil`. zpay runs the
binary directly, so no node process sits between zpay and anvil and stopping it is a
plain signal to one process.

Lookup order: `ZPAY_ANVIL_BIN`; `node_modules` of the repository root, then of the
working directory and its parents; `anvil` on PATH (e.g. installed by foundryup).

An anvil with a state file never outlives zpay and never shares its file: on Linux it gets
SIGTERM (on which it writes its state, like on SIGINT) when the process that started it
dies, even by SIGKILL; and it holds an exclusive lock on `<state file>.lock` for exactly as
long as it runs, which the next start waits for before starting another anvil on that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from functools import cache
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from zpay.chains.protocol import ChainUnavailable

if sys.platform != "win32":
    import fcntl

ANVIL_BIN_ENV = "ZPAY_ANVIL_BIN"
LOOPBACK = "127.0.0.1"
# How long a start waits for the anvil of a previous zpay (killed, its anvil still writing
# the state file on its way out) to release the state file. Read at start, not bound at
# import, so tests can shorten it.
STATE_LOCK_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_T = TypeVar("_T")


class AnvilNotFound(ChainUnavailable):
    code = "anvil_not_found"


class AnvilStartFailed(ChainUnavailable):
    code = "anvil_start_failed"


class AnvilStateBusy(AnvilStartFailed):
    """Another anvil still runs on the state file: starting a second writer would lose
    whatever the two write over each other."""

    code = "anvil_state_busy"


def _platform_package() -> str | None:
    os_name = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if os_name is None or arch is None:
        return None
    return f"anvil-{os_name}-{arch}"


def _binary_name() -> str:
    return "anvil.exe" if sys.platform == "win32" else "anvil"


def _candidates_in(node_modules: Path) -> list[Path]:
    scope = node_modules / "@foundry-rs"
    found: list[Path] = []
    package = _platform_package()
    if package is not None:
        found.append(scope / package / "bin" / _binary_name())
    # Where the wrapper's postinstall puts a downloaded binary, and where its bin.mjs
    # looks for one: both exist in the wild depending on the wrapper version.
    found.append(scope / "anvil" / _binary_name())
    found.append(scope / "dist" / _binary_name())
    return found


def _search_roots() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[3]
    cwd = Path.cwd().resolve()
    roots = [repo_root, cwd, *cwd.parents]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def find_anvil_binary(
    environ: Mapping[str, str] | None = None, *, search_roots: Sequence[Path] | None = None
) -> Path:
    """Path of the anvil executable, or AnvilNotFound saying where it looked."""
    env = os.environ if environ is None else environ
    looked: list[str] = []

    configured = env.get(ANVIL_BIN_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        # An explicit setting that points nowhere is a mistake to report, not to paper
        # over with some other anvil found later.
        raise AnvilNotFound(f"{ANVIL_BIN_ENV}={configured} is not an executable file")

    for root in _search_roots() if search_roots is None else search_roots:
        for candidate in _candidates_in(root / "node_modules"):
            looked.append(str(candidate))
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate

    on_path = shutil.which(_binary_name(), path=env.get("PATH"))
    if on_path is not None:
        return Path(on_path)
    looked.append("PATH")
    raise AnvilNotFound(
        "anvil not found: run `npm install` at the zpay repository root (it installs "
        f"@foundry-rs/anvil), or set {ANVIL_BIN_ENV}. Looked in: " + ", ".join(looked)
    )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def holds_listener(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds the socket listening on loopback `port` (Linux /proc);
    None where that cannot be told."""
    try:
        table = Path("/proc/net/tcp").read_text()
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    local = f"0100007F:{port:04X}"  # 127.0.0.1 (little-endian), the port (big-endian)
    inodes = {f"socket:[{fields[9]}]" for line in table.splitlines()[1:]
              if len(fields := line.split()) > 9 and fields[1] == local and fields[3] == "0A"}
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _rpc_chain_id(url: str, timeout_s: float) -> int | None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    result = answer.get("result") if isinstance(answer, dict) else None
    return int(result, 16) if isinstance(result, str) else None


@cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Resolved in the parent: the forked child must not dlopen (another thread may have held
    # the loader's lock at the fork).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGTERM when its parent dies (Linux only)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os._exit(1)

    return preexec


class _Spawner:
    """Forks children from one thread that lives as long as the process.

    Linux sends the parent-death signal when the THREAD that forked the child ends, not the
    process: forked from a worker of an executor (`asyncio.to_thread`), anvil would be
    killed whenever that pool retires the thread, e.g. when an event loop closes.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def run(self, job: Callable[[], _T]) -> _T:
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="zpay-anvil-spawner", daemon=True
                )
                self._thread.start()
        done: Future[_T] = Future()
        self._jobs.put((job, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:
                done.set_exception(exc)


_spawner = _Spawner()


def state_lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


class AnvilProcess:
    """One anvil child process on a free loopback port.

    Use `with AnvilProcess(...) as anvil:` / `async with ...`, or start()/stop().
    `state_path` makes the chain survive restarts (anvil loads it at start and writes it
    at exit), which the embedded network needs because the database outlives the process.
    Only one anvil runs on a state file at a time: start() waits up to
    `state_lock_timeout_s` (default STATE_LOCK_TIMEOUT_S) for a previous one to exit.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        chain_id: int = 31337,
        port: int | None = None,
        state_path: Path | None = None,
        block_time_s: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        state_lock_timeout_s: float | None = None,
    ) -> None:
        self._binary = binary
        self.chain_id = chain_id
        self._requested_port = port
        self._state_path = state_path
        self._block_time_s = block_time_s
        self._extra_args = tuple(extra_args)
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._state_lock_timeout_s = state_lock_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port: int | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise AnvilStartFailed("anvil is not running")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    def _command(self, binary: Path, port: int) -> list[str]:
        command = [
            str(binary),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--chain-id",
            str(self.chain_id),
            "--silent",
        ]
        if self._state_path is not None:
            command += ["--state", str(self._state_path)]
        if self._block_time_s is not None:
            command += ["--block-time", str(self._block_time_s)]
        command += list(self._extra_args)
        return command

    def start(self) -> None:
        """Start anvil and return once it answers eth_chainId with the expected id."""
        if self.running:
            return
        binary = self._binary or find_anvil_binary()
        lock_fd = self._lock_state_file()
        try:
            self._start(binary, lock_fd)
        finally:
            # anvil holds its own copy of the locked descriptor: the lock now lasts exactly
            # as long as that anvil does.
            if lock_fd is not None:
                os.close(lock_fd)

    def _start(self, binary: Path, lock_fd: int | None) -> None:
        # A free port can be taken between our probe and anvil's bind; a few attempts
        # make that race harmless. An explicit port is tried once.
        attempts = 1 if self._requested_port is not None else 3
        last_error = ""
        for _ in range(attempts):
            port = self._requested_port or free_loopback_port()
            # Lives as long as the process (closed in _kill), hence no `with`.
            self._log = tempfile.TemporaryFile(prefix="zpay-anvil-")  # noqa: SIM115
            self._process = self._spawn(self._command(binary, port), self._log, lock_fd)
            self.port = port
            if lock_fd is not None:
                os.ftruncate(lock_fd, 0)
                os.pwrite(lock_fd, f"{self._process.pid}\n".encode(), 0)
            if self._wait_ready():
                return
            last_error = self._log_tail()
            self._kill()
        raise AnvilStartFailed(f"anvil did not start ({binary}): {last_error.strip()[-2000:]}")

    @staticmethod
    def _spawn(command: list[str], log: IO[bytes], lock_fd: int | None) -> subprocess.Popen[bytes]:
        preexec = _die_with_parent()

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C aimed at zpay's terminal must not kill
                # anvil before zpay has stopped it (and let it write its state).
                start_new_session=True,
                # ...but it dies with zpay, even a SIGKILLed one (SIGTERM: state written).
                preexec_fn=preexec,
                pass_fds=() if lock_fd is None else (lock_fd,),
            )

        return popen() if preexec is None else _spawner.run(popen)

    def _lock_state_file(self) -> int | None:
        """An fd holding the exclusive lock of the state file, once no other anvil runs on
        it; AnvilStateBusy if one still does after the timeout. None without a state file."""
        if self._state_path is None or sys.platform == "win32":
            return None
        lock_path = state_lock_path(self._state_path)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        timeout_s = self._state_lock_timeout_s
        if timeout_s is None:
            timeout_s = STATE_LOCK_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise AnvilStateBusy(
                            f"another anvil{_lock_holder(fd)} still runs on the state file "
                            f"{self._state_path} after {timeout_s:g} s; refusing to start a "
                            "second one on it (is another zpay using this data directory?)"
                        ) from None
                    time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            chain_id = _rpc_chain_id(self.rpc_url, timeout_s=1.0)
            if chain_id is not None:
                assert self.port is not None
                if holds_listener(self._process.pid, self.port) is False:
                    # Another node took the port between our probe and anvil's bind (a
                    # second zpay, a parallel test): it answers, but it is not ours, and
                    # ours is about to exit.
                    time.sleep(0.05)
                    continue
                if chain_id != self.chain_id:
                    raise AnvilStartFailed(
                        f"port {self.port} answers chain id {chain_id}, not {self.chain_id}"
                    )
                return True
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        self.port = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop anvil: SIGINT first (anvil writes `--state` on it), SIGKILL if it hangs."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sys.platform == "win32":
                    process.terminate()
                else:
                    process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._kill()

    async def start_async(self) -> None:
        await asyncio.to_thread(self.start)

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()
