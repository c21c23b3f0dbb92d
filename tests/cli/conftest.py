"""A live `zpay serve` PROCESS on a migrated SQLite file, and a runner for `zpay …` as a
subprocess against it, the way an operator or a shell script uses them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port

ZPAY = Path(sys.executable).with_name("zpay")  # the installed entry point, not `-m`


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out, parse_float=Decimal)


@dataclass(frozen=True)
class Cli:
    env: dict[str, str]
    data_dir: Path

    def run(self, *args: str, ok: bool | None = True, timeout_s: float = 60) -> Result:
        proc = subprocess.run([str(ZPAY), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok is not None:
            assert (result.code == 0) is ok, (args, result)
        return result

    def json(self, *args: str) -> Any:
        return self.run(*args, "--json").json()

    def with_key(self, api_key: str) -> Cli:
        return Cli({**self.env, "ZPAY_API_KEY": api_key}, self.data_dir)


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    port = free_port()
    env.update({
        "ZPAY_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'zpay.db'}",
        "ZPAY_DATA_DIR": str(root / "data"),
        "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ZPAY_SCHEDULER": "0",
        "ZPAY_PORT": str(port),
        "ZPAY_WEBHOOKS_ALLOW_PRIVATE": "1",
        "ZPAY_URL": f"http://127.0.0.1:{port}",
    })
    return env


@pytest.fixture(scope="module")
def cli(server_env: dict[str, str]) -> Iterator[Cli]:
    """`zpay db upgrade`, then `zpay serve` until the module's tests are done."""
    data_dir = Path(server_env["ZPAY_DATA_DIR"])
    base = Cli(server_env, data_dir)
    assert "latest schema" in base.run("db", "upgrade").out
    server = subprocess.Popen([str(ZPAY), "serve"], env=server_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(server_env["ZPAY_URL"], server)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_healthy(url: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            raise RuntimeError(f"zpay serve exited: {output}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("zpay serve did not become healthy in 30 s")


@pytest.fixture(scope="module")
def merchant(cli: Cli) -> Cli:
    """A merchant created with `zpay merchants create` WHILE the server runs."""
    created = cli.json("merchants", "create", "--name", "cli shop")
    assert created["api_key"].startswith("sk_test_")
    return cli.with_key(created["api_key"])
