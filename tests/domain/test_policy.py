from datetime import UTC, datetime, timedelta

from zpay.domain.policy import KeyState, PolicyLimits, PolicyState, Reason, authorize
from zpay.domain.windows import Spend, Window, WindowMode, WindowSpec, window_usage

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
USDC = 1_000_000


def key(
    funded: int = 500 * USDC, spent: int = 0, held: int = 0, status: str = "active"
) -> KeyState:
    return KeyState(
        status=status, expires_at=NOW + timedelta(days=1), funded=funded, spent=spent, held=held
    )


def policy(spends: tuple[Spend, ...] = (), **limits: object) -> PolicyState:
    return PolicyState(
        status="active",
        expires_at=None,
        limits=PolicyLimits(**limits),  # type: ignore[arg-type]
        total_committed=sum(s.amount for s in spends),
        spends=spends,
    )


def test_balance_layer_alone() -> None:
    assert authorize(500 * USDC, key=key(), policy=None, recipient="r", chain="c", now=NOW).allowed
    d = authorize(500 * USDC + 1, key=key(), policy=None, recipient="r", chain="c", now=NOW)
    assert (d.allowed, d.reason) == (False, Reason.INSUFFICIENT_BALANCE)


def test_linked_limits_per_transaction_and_daily() -> None:
    limits = {"max_per_transaction": 25 * USDC, "max_per_day": 100 * USDC}
    d = authorize(500 * USDC, key=key(), policy=policy(**limits), recipient="r", chain="c", now=NOW)
    assert d.reason == Reason.PER_TRANSACTION
    spent = tuple(Spend(NOW - timedelta(hours=1), 25 * USDC) for _ in range(4))
    d = authorize(
        25 * USDC,
        key=key(spent=100 * USDC),
        policy=policy(spent, **limits),
        recipient="r",
        chain="c",
        now=NOW,
    )
    assert d.reason == Reason.DAILY
    assert d.window_remaining[Window.DAY] == 0
    assert d.window_resets_at[Window.DAY] == NOW - timedelta(hours=1) + timedelta(hours=24)


def test_rolling_day_frees_up_after_24h() -> None:
    old = (Spend(NOW - timedelta(hours=25), 100 * USDC),)
    d = authorize(
        100 * USDC,
        key=key(),
        policy=policy(old, max_per_day=100 * USDC),
        recipient="r",
        chain="c",
        now=NOW,
    )
    assert d.allowed


def test_calendar_day_in_a_timezone_resets_at_local_midnight() -> None:
    spec = WindowSpec(WindowMode.CALENDAR, "America/New_York")
    # 12:00 UTC = 07:00 New York; yesterday evening New York time is outside today's window.
    spends = [Spend(datetime(2026, 11, 21, 3, 0, tzinfo=UTC), 5), Spend(NOW, 7)]
    usage = window_usage(spec, spends, NOW)
    assert usage[Window.DAY].used == 7
    assert usage[Window.DAY].resets_at == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    assert usage[Window.WEEK].starts_at == datetime(2026, 11, 16, 5, 0, tzinfo=UTC)  # Monday
    assert usage[Window.MONTH].starts_at == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # EDT
    assert usage[Window.MONTH].resets_at == datetime(2026, 12, 1, 5, 0, tzinfo=UTC)


def test_key_state_refusals_come_first() -> None:
    for status, reason in (
        ("revoked", Reason.SESSION_KEY_REVOKED),
        ("expired", Reason.SESSION_KEY_EXPIRED),
        ("pending_approval", Reason.SESSION_KEY_PENDING),
    ):
        d = authorize(1, key=key(status=status), policy=None, recipient="r", chain="c", now=NOW)
        assert d.reason == reason
    late = KeyState("active", NOW, 10, 0, 0)
    assert authorize(1, key=late, policy=None, recipient="r", chain="c", now=NOW).reason == (
        Reason.SESSION_KEY_EXPIRED
    )


def test_allow_lists_and_total() -> None:
    p = policy(allowed_recipients=frozenset({"a"}), allowed_chains=frozenset({"solana-local"}))
    assert (
        authorize(1, key=key(), policy=p, recipient="b", chain="solana-local", now=NOW).reason
        == Reason.RECIPIENT
    )
    assert (
        authorize(1, key=key(), policy=p, recipient="a", chain="evm-local", now=NOW).reason
        == Reason.CHAIN
    )
    assert authorize(1, key=key(), policy=p, recipient=None, chain="solana-local", now=NOW).allowed
    t = policy((Spend(NOW, 90),), max_total=100)
    assert authorize(11, key=key(), policy=t, recipient="x", chain="c", now=NOW).reason == (
        Reason.TOTAL
    )
    assert (
        authorize(10, key=key(), policy=t, recipient="x", chain="c", now=NOW).effective_limit == 10
    )


def test_domain_imports_only_the_standard_library() -> None:
    import ast
    import pathlib
    import sys

    import zpay.domain

    forbidden = {"sqlalchemy", "litestar", "solana", "solders", "web3", "eth_account", "httpx"}
    for path in pathlib.Path(zpay.domain.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, f"{path.name} imports {name}"
                assert top in sys.stdlib_module_names or top in ("zpay", "__future__"), name
