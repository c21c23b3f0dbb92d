"""The embedded anvil of evm-local never outlives zpay and never shares its state file.

A zpay killed with SIGKILL takes its anvil with it (which writes its state on the way out),
and a restart waits for that anvil to be gone before starting the next one on the same
file: there is never a second writer, and nothing captured on chain vanishes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account

from zpay.chains import anvil as anvil_module
from zpay.chains.anvil import AnvilProcess, AnvilStateBusy, state_lock_path
from zpay.chains.evm import EvmAdapter
from zpay.chains.registry import NetworkSpec, get_network, rpc_env_var

USDC = 10**6
BOUND_S = 60.0  # generous: a loaded machine, anvil writing its state on the way out
REPO = Path(__file__).resolve().parents[2]

# What `zpay serve` does with evm-local: open the embedded network, move money, live on.
CHILD = """
import asyncio, sys
from pathlib import Path
from zpay.chains.evm import EvmAdapter
from zpay.chains.registry import get_network

async def main() -> None:
    adapter = await EvmAdapter.open(get_network("evm-local"), None, state_dir=Path(sys.argv[1]))
    await adapter.faucet(sys.argv[2], adapter.token("USDC"), int(sys.argv[3]))
    print(adapter._anvil.pid, adapter.instance_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def spec() -> NetworkSpec:
    env = {k: v for k, v in os.environ.items() if k != rpc_env_var("evm-local")}
    return get_network("evm-local", env)


def alive(pid: int) -> bool:
    """Running, by /proc: an exited anvil re-parented away from us may linger as a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def anvils_on(state_path: Path) -> list[int]:
    """Live anvil processes started with `state_path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"anvil")
            and str(state_path).encode() in argv
            and alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return sorted(found)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {BOUND_S} s"
        await asyncio.sleep(0.05)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "chains" / "evm-local"


def skip_unless_linux() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal and /proc are Linux's")


async def test_killed_zpay_takes_its_anvil_along_and_the_chain_keeps_its_payments(
    state_dir: Path, tmp_path: Path
) -> None:
    skip_unless_linux()
    user = Account.create().address
    env = {k: v for k, v in os.environ.items() if k != rpc_env_var("evm-local")}
    with (tmp_path / "child.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state_dir), user, str(7 * USDC)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=REPO,
        )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), BOUND_S)
        assert line, (tmp_path / "child.log").read_text()
        pid_text, instance_id = line.decode().split()
        anvil_pid = int(pid_text)
        assert alive(anvil_pid)
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup, like `kill -9` of zpay serve
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    await wait_until(lambda: not alive(anvil_pid), "exited with its parent")

    adapter = await EvmAdapter.open(spec(), None, state_dir=state_dir)
    try:
        assert adapter.instance_id == instance_id  # the same chain, not a fresh one
        assert await adapter.balance(user, adapter.token("USDC")) == 7 * USDC
        assert adapter._anvil is not None
        assert anvils_on(state_dir / "anvil-state.json") == [adapter._anvil.pid]
    finally:
        await adapter.close()
    assert anvils_on(state_dir / "anvil-state.json") == []


async def test_a_second_opener_waits_for_the_running_anvil_and_never_runs_beside_it(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_unless_linux()
    state_path = state_dir / "anvil-state.json"
    user = Account.create().address
    first = await EvmAdapter.open(spec(), None, state_dir=state_dir)
    second: asyncio.Task[EvmAdapter] | None = None
    try:
        await first.faucet(user, first.token("USDC"), 5 * USDC)
        assert first._anvil is not None
        first_pid = first._anvil.pid
        assert anvils_on(state_path) == [first_pid]

        # Refuses, naming the state file, once the wait is over...
        monkeypatch.setattr(anvil_module, "STATE_LOCK_TIMEOUT_S", 0.5)
        with pytest.raises(AnvilStateBusy, match=re.escape(str(state_path))) as refused:
            await EvmAdapter.open(spec(), None, state_dir=state_dir)
        assert f"pid {first_pid}" in str(refused.value)
        assert anvils_on(state_path) == [first_pid]

        # ...and while it waits, it starts nothing: the first anvil is the only writer.
        monkeypatch.setattr(anvil_module, "STATE_LOCK_TIMEOUT_S", BOUND_S)
        second = asyncio.create_task(EvmAdapter.open(spec(), None, state_dir=state_dir))
        done, _ = await asyncio.wait({second}, timeout=1.0)
        assert not done, second.result()
        assert anvils_on(state_path) == [first_pid]
    finally:
        await first.close()  # graceful: anvil writes its state, then lets go of the file
    assert second is not None
    adapter = await asyncio.wait_for(second, BOUND_S)
    try:
        assert adapter.instance_id == first.instance_id
        assert await adapter.balance(user, adapter.token("USDC")) == 5 * USDC
        assert adapter._anvil is not None
        assert anvils_on(state_path) == [adapter._anvil.pid]
    finally:
        await adapter.close()


def test_the_lock_lives_exactly_as_long_as_anvil(tmp_path: Path) -> None:
    skip_unless_linux()
    state_path = tmp_path / "state.json"
    with AnvilProcess(chain_id=31337, state_path=state_path) as first:
        assert first.pid is not None
        assert state_lock_path(state_path).read_text().strip() == str(first.pid)
        with pytest.raises(AnvilStateBusy, match="refusing to start a second one"):
            AnvilProcess(chain_id=31337, state_path=state_path, state_lock_timeout_s=0).start()
    # Stopped: the next one gets the file at once.
    with AnvilProcess(chain_id=31337, state_path=state_path, state_lock_timeout_s=0) as second:
        assert second.running
    assert state_path.exists()  # written at the graceful stop


def test_anvil_outlives_the_thread_that_started_it() -> None:
    """The parent-death signal follows the forking THREAD: anvil must not die with a worker
    thread (asyncio.to_thread, an executor retiring its threads), only with the process."""
    skip_unless_linux()
    anvil = AnvilProcess(chain_id=31337)
    starter = threading.Thread(target=anvil.start)
    starter.start()
    starter.join()
    try:
        assert anvil.running and anvil.pid is not None
        # A signal would arrive at once; give it the time a scheduler slice takes.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert anvil.running
            time.sleep(0.05)
    finally:
        anvil.stop()


def test_stop_still_interrupts_gracefully(tmp_path: Path) -> None:
    anvil = AnvilProcess(chain_id=31337, state_path=tmp_path / "state.json")
    anvil.start()
    process = anvil._process
    assert process is not None
    anvil.stop()
    assert process.returncode == 0  # SIGINT honoured, not SIGKILLed
    assert (tmp_path / "state.json").exists()


def test_kill_of_the_parent_signals_anvil_even_when_idle(tmp_path: Path) -> None:
    """Without a state file too: an external-less anvil never outlives its parent."""
    skip_unless_linux()
    script = (
        "import sys; from zpay.chains.anvil import AnvilProcess; "
        "a = AnvilProcess(chain_id=31337); a.start(); print(a.pid, flush=True); "
        "import time; time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert child.stdout is not None
        anvil_pid = int(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    deadline = time.monotonic() + BOUND_S
    while alive(anvil_pid):
        assert time.monotonic() < deadline, "anvil outlived its killed parent"
        time.sleep(0.05)


def test_a_port_another_node_holds_is_never_taken_for_ours() -> None:
    """Two anvils on one port (a probed port taken before anvil binds it, as parallel
    starts can): the one that lost the bind must not take the other, answering with the
    same chain id, for itself."""
    skip_unless_linux()
    with AnvilProcess(chain_id=31337) as first:
        assert first.port is not None and first.pid is not None
        assert anvil_module.holds_listener(first.pid, first.port) is True
        second = AnvilProcess(chain_id=31337, port=first.port, startup_timeout_s=10)
        with pytest.raises(anvil_module.AnvilStartFailed):
            second.start()
        assert not second.running and first.running
