"""`zpay serve --workers N` runs where several processes can share the state: PostgreSQL
and chains reached over RPC; elsewhere it refuses with one sentence naming the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from zpay.api.workers import CannotFork, check_multiprocess
from zpay.settings import Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/x"


def _settings(tmp_path: Path, url: str, chains: tuple[str, ...]) -> Settings:
    base = Settings.from_env({"ZPAY_DATABASE_URL": url, "ZPAY_DATA_DIR": str(tmp_path)})
    return dataclasses.replace(base, chains=chains)


def test_sqlite_keeps_one_writer_process(tmp_path: Path) -> None:
    with pytest.raises(CannotFork, match="needs PostgreSQL"):
        check_multiprocess(_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/z.db",
                                     ("solana-devnet",)))


def test_an_embedded_chain_belongs_to_one_process(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZPAY_RPC_URL_SOLANA_LOCAL", raising=False)
    with pytest.raises(CannotFork, match="ZPAY_RPC_URL_SOLANA_LOCAL"):
        check_multiprocess(_settings(tmp_path, PG, ("solana-local",)))


def test_postgresql_and_a_shared_node_can_fork(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZPAY_RPC_URL_SOLANA_LOCAL", "http://127.0.0.1:8899")
    check_multiprocess(_settings(tmp_path, PG, ("solana-local", "solana-devnet")))
