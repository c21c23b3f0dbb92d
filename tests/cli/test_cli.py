"""Every `zpay` command as a subprocess against a live `zpay serve` process (real HTTP).

Two tests, so that at most two servers start under xdist; each command runs at least once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.cli.conftest import Cli
from zpay.client import SolanaWallet
from zpay.client.console import COLUMNS
from zpay.client.types import SessionKey


def _field(text: str, name: str) -> str:
    """A value from the `name  value` lines of text output."""
    return next(line.split(maxsplit=1)[1] for line in text.splitlines()
                if line.split(maxsplit=1)[0] == name)


def test_session_key_story(merchant: Cli, tmp_path: Path) -> None:
    user = SolanaWallet.generate()
    keypair = tmp_path / "user.json"
    user.to_file(keypair)
    drip = merchant.run("faucet", "--wallet", user.address, "--amount", "100",
                        "--chain", "solana-local", "--token", "USDC")
    assert "minting 100 USDC" in drip.err and "done in" in drip.err  # progress, on stderr
    assert _field(drip.out, "balance") == "100.000000"

    agent = merchant.json("agents", "create", "--name", "shopper")
    as_agent = merchant.with_key(agent["token"])
    session = merchant.json("sessions", "create", "--agent-id", agent["id"],
                            "--max-per-transaction", "25", "--max-per-day", "60",
                            "--expiry-hours", "1")

    created = merchant.run("session-keys", "create", "--agent-id", agent["id"], "--wallet",
                           user.address, "--max-amount", "40", "--expiry-hours", "2",
                           "--chain", "solana-local", "--token", "USDC",
                           "--session-id", session["id"])
    key_id = _field(created.out, "id")
    assert _field(created.out, "status") == "pending_approval"
    assert "approval_transaction" not in created.out  # wallet payloads only with --json
    assert f"zpay session-keys approve {key_id} --keypair" in created.err

    approved = merchant.run("session-keys", "approve", key_id, "--keypair", str(keypair))
    assert "waiting for the chain" in approved.err and "done in" in approved.err
    assert _field(approved.out, "status") == "active"
    status = merchant.json("session-keys", "status", key_id)
    assert (status["funded_amount"], status["linked_session_id"]) == ("40.000000", session["id"])

    shop = SolanaWallet.generate().address
    refused = as_agent.run("payments", "create", "--session-key-id", key_id, "--amount",
                           "26", "--recipient", shop, ok=False)
    assert refused.code == 1 and refused.out == ""
    assert refused.err.splitlines()[-1] == (
        "error: the amount exceeds the session's per-transaction limit (per_transaction_limit)")
    paid = as_agent.json("payments", "create", "--session-key-id", key_id, "--amount", "25",
                         "--recipient", shop, "--description", "a book",
                         "--idempotency-key", "order-1")
    assert (paid["status"], paid["amount"]) == ("succeeded", "25.000000")
    check = as_agent.json("session-keys", "can-afford", key_id, "--amount", "16",
                          "--recipient", shop)
    assert (check["allowed"], check["reason"]) == (False, "insufficient_session_balance")

    topped = merchant.run("session-keys", "top-up", key_id, "--amount", "10", "--keypair",
                          str(keypair))
    assert "waiting for the chain" in topped.err
    assert _field(topped.out, "funded_amount") == "50.000000"
    # a top-up signed elsewhere (a browser wallet), then submitted by id
    top_up = merchant.json("session-keys", "top-up", key_id, "--amount", "5")
    assert (top_up["kind"], top_up["amount"]) == ("top_up", "5.000000")
    signed = user.sign_approval(top_up)["signed_transaction"]
    submitted = merchant.json("session-keys", "submit-approval", key_id, "--top-up-id",
                              top_up["id"], "--signed-transaction", signed)
    assert submitted["funded_amount"] == "55.000000"

    assert merchant.json("session-keys", "unlink", key_id)["linked_session_id"] is None
    text = as_agent.run("payments", "create", "--session-key-id", key_id, "--amount", "30",
                        "--recipient", shop, "--no-wait", "--timeout", "30")
    assert "paying 30 to" in text.err and _field(text.out, "status") == "succeeded"
    relinked = merchant.json("session-keys", "link", key_id, "--session-id", session["id"])
    assert relinked["linked_session_id"] == session["id"]

    assert merchant.json("payments", "get", paid["id"])["description"] == "a book"
    payments = merchant.run("payments", "list", "--session-key-id", key_id).out.splitlines()
    assert payments[0].split()[:3] == ["ID", "STATUS", "AMOUNT"]
    assert [line.split()[2] for line in payments[1:]] == ["30.000000", "25.000000"]
    attempts = merchant.json("session-keys", "attempts", key_id)
    assert [a["reason"] for a in attempts["data"]] == [
        "approved", "approved", "per_transaction_limit"]

    revoked = merchant.run("session-keys", "revoke", key_id)
    assert _field(revoked.out, "status") == "revoked"
    assert "refund run of the scheduler" in revoked.err
    again = merchant.run("session-keys", "approve", key_id, "--keypair", str(keypair), ok=False)
    assert again.code == 1 and "(nothing_to_approve)" in again.err


def test_every_other_command(cli: Cli, merchant: Cli, server_env: dict[str, str]) -> None:
    # agents (text output: the shown-once token, and a warning on stderr)
    created = merchant.run("agents", "create", "--name", "shopper")
    assert "token above is shown once" in created.err
    agent_id, token = _field(created.out, "id"), _field(created.out, "token")
    assert agent_id in merchant.run("agents", "list", "--all").out
    assert merchant.json("agents", "get", agent_id)["name"] == "shopper"
    rotated = merchant.json("agents", "rotate-token", agent_id)
    old = merchant.with_key(token).run("agents", "get", agent_id, ok=False)
    assert "(invalid_credentials)" in old.err
    assert merchant.json("agents", "freeze", agent_id)["status"] == "frozen"
    frozen = merchant.with_key(rotated["token"]).run("agents", "get", agent_id, ok=False)
    assert "(agent_frozen)" in frozen.err
    assert merchant.json("agents", "unfreeze", agent_id)["status"] == "active"

    # policy sessions
    created = merchant.run("sessions", "create", "--agent-id", agent_id, "--max-per-week",
                           "100", "--max-per-month", "300", "--max-total", "1000",
                           "--allowed-chain", "solana-local", "--allowed-method", "transfer",
                           "--active-hours", "0,24", "--window-mode", "calendar",
                           "--timezone", "Europe/Paris", "--token", "USDC")
    assert "access token above is shown once" in created.err
    session_id = _field(created.out, "id")
    shown = merchant.json("sessions", "get", session_id)
    assert (shown["max_per_week"], shown["window_mode"], shown["timezone"]) == (
        "100.000000", "calendar", "Europe/Paris")
    assert shown["allowed_chains"] == ["solana-local"] and shown["active_hours"] == [0, 24]
    listed = merchant.run("sessions", "list", "--agent-id", agent_id)
    assert session_id in listed.out and "PER_TX" in listed.out
    assert merchant.json("sessions", "revoke", session_id)["status"] == "revoked"

    # session-keys list: a table, or JSON following every page; no chain needed to create
    wallet = SolanaWallet.generate().address
    ids = [merchant.json("session-keys", "create", "--agent-id", agent_id, "--wallet", wallet,
                         "--max-amount", amount, "--expiry-hours", "0.5")["id"]
           for amount in ("1", "2")]
    listed_json = merchant.json("session-keys", "list", "--agent-id", agent_id, "--all")
    assert [k["id"] for k in listed_json["data"]] == ids[::-1]
    table = merchant.run("session-keys", "list", "--agent-id", agent_id, "--limit", "1")
    lines = table.out.splitlines()
    assert lines[0].split() == [h for h, _ in COLUMNS[SessionKey]]
    assert [line.split()[:2] for line in lines[1:]] == [[ids[1], "pending_approval"]]
    none = merchant.run("session-keys", "list", "--agent-id", agent_id, "--status", "active")
    assert none.out.splitlines()[1:] == [] and "(none)" in none.err

    # webhooks and events
    endpoint = merchant.json("webhooks", "create", "http://127.0.0.1:9/hooks", "--event-type",
                             "session.created", "--description", "books")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["id"] in merchant.run("webhooks", "list").out
    assert merchant.json("webhooks", "get", endpoint["id"])["description"] == "books"
    session = merchant.json("sessions", "create", "--agent-id", agent_id, "--max-total", "1")
    asyncio.run(_dispatch(server_env))  # what the scheduler (off here) would do
    (event,) = merchant.json("events", "list", "--object-id", session["id"])["data"]
    assert event["type"] == "session.created"
    assert session["id"] in merchant.run("events", "list", "--type", "session.created").out
    deliveries = merchant.json("webhooks", "deliveries", endpoint["id"], "--status", "pending",
                               "--all")
    (delivery_id,) = [d["id"] for d in deliveries["data"] if d["event_id"] == event["id"]]
    assert merchant.json("webhooks", "redeliver", delivery_id)["status"] == "pending"
    assert merchant.json("webhooks", "delete", endpoint["id"])["deleted"] is True

    # errors: the problem's message and code, non-zero exit
    assert merchant.json("agents", "delete", agent_id)["deleted"] is True
    gone = merchant.run("agents", "get", agent_id, ok=False)
    assert gone.code == 1 and gone.err == f"error: no agent '{agent_id}' (agent_not_found)\n"
    assert "(missing_credentials)" in cli.run("agents", "list", ok=False).err
    wrong = merchant.run("agents", "list", "--api-key", "sk_test_nope", ok=False)
    assert "(invalid_credentials)" in wrong.err  # --api-key after the command beats the env
    nowhere = merchant.run("--url", "http://127.0.0.1:9", "agents", "list", "--retries", "0",
                           ok=False)
    assert "cannot reach zpay" in nowhere.err
    usage = merchant.run("session-keys", "create", "--agent-id", "x", ok=False)
    assert usage.code == 2 and "--wallet" in usage.err
    bad_file = merchant.run("session-keys", "approve", "skey_x", "--keypair", "/nonexistent",
                            ok=False)
    assert bad_file.code == 1 and "No such file" in bad_file.err
    text = cli.run("merchants", "create", "--name", "plain")
    assert "secret key (shown once, store it now): sk_test_" in text.out


async def _dispatch(env: dict[str, str]) -> None:
    """Turn outbox events into deliveries, as the webhook job does (only the DB is needed)."""
    from zpay.custody import custody_from_settings
    from zpay.jobs.delivery import dispatch_all
    from zpay.services.context import AppContext, ChainSet
    from zpay.settings import Settings
    from zpay.store.database import Database

    settings = Settings.from_env(env)
    db = Database(settings.database_url)
    custody = custody_from_settings(settings.master_key, 1, "", data_dir=settings.data_dir,
                                    allow_generated=False)
    try:
        await dispatch_all(AppContext(settings=settings, db=db, custody=custody,
                                      chains=ChainSet()))
    finally:
        await db.dispose()
