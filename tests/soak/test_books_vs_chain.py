"""Books == chain under realistic conditions, with the chain as the referee.

Real `zpay serve` / `zpay worker` processes on PostgreSQL (and SQLite for the crash soak),
anvil mining every second, a burnt core, kill -9 of a server: then every payment's status
is compared with what the chain says, every wallet's balance with the books, and `zpay
audit` must agree. The harness is `benchmarks/books_vs_chain.py` (also a CLI); on failure
the assertion message is its report table and the differences it found, with evidence.
"""

from __future__ import annotations

import pytest
from benchmarks.books_vs_chain import Report, SoakConfig, run_soak

pytestmark = pytest.mark.slow


def explain(report: Report) -> str:
    lines = [report.table(), *("  ! " + p for p in report.problems()[:40])]
    lines += ["  log: " + s for s in report.log_samples]
    if report.audit_detail:
        lines.append("  audit output:\n" + report.audit_detail[-2000:])
    return "\n".join(lines)


def assert_books_equal_chain(report: Report, *, payments: int) -> None:
    why = explain(report)
    assert not report.errors, why
    assert report.payments >= payments, why
    assert report.not_final == 0, why
    assert report.mismatches == [], why
    assert report.balance_diffs == [], why
    assert report.chain.get("confirmed", 0) == report.succeeded, why
    assert report.audit_differences == 0 and report.audit_rc == 0, why


@pytest.mark.parametrize("chain", ["evm-local", "solana-local"])
def test_16_agents_x_50_payments_on_a_loaded_machine(chain: str) -> None:
    """16 keys funded with exactly 50 USDC through the real approval flow, 16 x 50
    concurrent 1-USDC payments plus a 51st per key, one core burnt meanwhile. evm-local is
    an external anvil with --block-time 1."""
    report = run_soak(SoakConfig(chain=chain, database="postgres", agents=16,
                                 payments_per_agent=50, load=True, quiet=True,
                                 label=f"16x50 {chain}"))
    assert_books_equal_chain(report, payments=16 * 50)
    assert report.succeeded == 16 * 50, explain(report)
    assert report.refused == 16 and report.extra_allowed == 0, explain(report)


def test_two_servers_and_two_workers_share_the_relayer() -> None:
    """Two `zpay serve` (scheduler off) and two `zpay worker` on one database and one data
    directory: one relayer key, two nonce counters. 200 payments; the chain must carry each
    authorization at most once, and the books must equal the chain."""
    report = run_soak(SoakConfig(chain="evm-local", database="postgres", agents=8,
                                 payments_per_agent=25, replicas=2, workers=2, quiet=True,
                                 label="2 serve + 2 worker"))
    assert_books_equal_chain(report, payments=200)
    assert report.duplicate_auth_txs == 0, explain(report)
    assert report.succeeded == 200, explain(report)


# evm-local x sqlite is left to the CLI (`--kill 2 --anvil embedded --database sqlite`):
# a payment caught between its hold and its recorded transfer is released only after
# reconciliation's grace (the request deadline + 5 s), so each EVM crash run takes longer.
@pytest.mark.parametrize(("chain", "database"), [("evm-local", "postgres"),
                                                 ("solana-local", "sqlite"),
                                                 ("solana-local", "postgres")])
def test_kill_9_under_load(chain: str, database: str) -> None:
    """kill -9 the server twice while 8 agents pay (evm-local: the anvil zpay embeds),
    restart it with the same command. Afterwards every payment is final, books == chain,
    every Idempotency-Key retried once answers its payment's real outcome (no 409), and
    no embedded anvil outlives its server."""
    report = run_soak(SoakConfig(chain=chain, anvil="embedded", database=database, agents=8,
                                 payments_per_agent=10, kills=2, quiet=True,
                                 label=f"kill -9 {chain} {database}"))
    assert_books_equal_chain(report, payments=8 * 10)
    assert report.kills == 2, explain(report)
    assert report.retry_409 == [] and report.retry_wrong == [], explain(report)
    assert report.orphans == [], explain(report)
