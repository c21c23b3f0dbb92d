"""`zpay serve` refuses to start with one sentence naming the path and the fix, exit status
2 and no traceback: an unusable data directory, an unmigrated database, a local chain
state that is missing or belongs to another database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support import free_port
from zpay.services.bootstrap import startup_refusal
from zpay.store.migrate import upgrade


def _serve(tmp_path: Path, data_dir: Path, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZPAY_DATA_DIR": str(data_dir),
           "ZPAY_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "ZPAY_CHAINS": "solana-local"}
    return subprocess.run([sys.executable, "-m", "zpay.cli", "serve", "--port",
                           str(free_port()), "--no-scheduler"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _one_sentence(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_refusals_are_one_sentence(tmp_path: Path) -> None:
    db = tmp_path / "zpay.db"
    # Not migrated.
    line = _one_sentence(_serve(tmp_path, tmp_path / "data", db))
    assert str(db) in line and "zpay db upgrade" in line
    upgrade(f"sqlite+aiosqlite:///{db}")
    # A data directory that cannot be created (a file is in the way).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    line = _one_sentence(_serve(tmp_path, blocker / "data", db))
    assert str(blocker / "data") in line and "ZPAY_DATA_DIR" in line
    # A local chain state that is not the database's (missing, then recreated).
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO chain_instances (network, instance_id, created_at) "
                     "VALUES ('solana-local', 'another-chain', '2026-01-01 00:00:00')")
    data = tmp_path / "data"
    line = _one_sentence(_serve(tmp_path, data, db))
    assert str(data / "chains" / "solana-local") in line and "restore" in line


def test_a_read_only_data_directory_names_the_path_and_the_fix() -> None:
    # (Root ignores permissions, so the read-only case is checked at the mapping.)
    data = Path("/srv/zpay")
    exc = PermissionError(13, "Permission denied", str(data / "master.key"))
    refusal = startup_refusal(exc, data, "sqlite+aiosqlite:////srv/zpay/zpay.db")
    assert refusal is not None
    text = str(refusal)
    assert "/srv/zpay/master.key" in text and "Permission denied" in text
    assert "ZPAY_DATA_DIR" in text and "\n" not in text
    assert startup_refusal(RuntimeError("a bug"), data, "x") is None
