"""The `zpay` command line."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from zpay.settings import Settings

if TYPE_CHECKING:
    from zpay.client import ApprovalSigner, Zpay
    from zpay.services.context import AppContext

# Not imported from zpay.client: `zpay --help` and the server commands stay free of httpx.
# asyncio too is imported where used: API commands never need it.
DEFAULT_URL = "http://127.0.0.1:8000"
T = TypeVar("T")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import socket

    from zpay.api.app import build_context, create_app
    from zpay.api.observability import configure_logging, listening_server
    from zpay.api.workers import CannotFork, check_multiprocess, run_loop, serve_forked

    if args.no_scheduler:
        settings = dataclasses.replace(settings, scheduler_enabled=False)
    host, port = args.host or settings.host, args.port or settings.port
    configure_logging(settings.log_level, settings.log_format)

    async def run(sock: socket.socket | None = None) -> None:
        # The context first, in this loop: a start-up refusal (unwritable data directory,
        # missing or foreign chain state, unmigrated database) reaches `main` as one
        # sentence instead of a lifespan traceback.
        ctx = await build_context(settings)
        try:
            server = listening_server(create_app(context=ctx), host=host, port=port)
            _settle_the_heap()
            await server.serve(sockets=None if sock is None else [sock])
        finally:
            await ctx.chains.close()
            await ctx.db.dispose()

    if args.workers > 1:  # processes sharing one socket (zpay.api.workers)
        try:
            check_multiprocess(settings)
        except CannotFork as exc:
            print(f"zpay serve: {exc}", file=sys.stderr)
            return 2
        from zpay.metrics import prepare_multiprocess

        # /metrics in any worker then shows every worker's counters
        prepare_multiprocess(settings.data_dir / f"prometheus-{port}")
        return serve_forked(args.workers, host, port, run)
    run_loop(run())  # on uvloop
    return 0


def _settle_the_heap() -> None:
    """What start-up built lives as long as the process: out of the collector's sight
    (`gc.freeze`), so its full passes stop re-walking it — under load they showed as the
    tail of every request's latency."""
    import gc

    gc.collect()
    gc.freeze()


def _worker(_args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from zpay.api.app import build_context
    from zpay.api.observability import configure_logging
    from zpay.jobs.scheduler import run_until_signalled

    # Libraries at WARNING: httpx and APScheduler log every request and run at INFO.
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        ctx = await build_context(settings)
        try:
            print(f"zpay worker: jobs every {settings.scheduler_interval_s:g}s on "
                  f"{ctx.db.safe_url}", flush=True)
            await run_until_signalled(ctx)
        finally:
            await ctx.chains.close()
            await ctx.db.dispose()

    asyncio.run(run())
    return 0


def _db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    from zpay.store.migrate import upgrade

    upgrade(settings.database_url)
    print("database is at the latest schema")
    return 0


async def _admin_context(settings: Settings) -> AppContext:
    """Database and custody only: admin commands never open a chain, so they work while
    `zpay serve` holds the local chain state."""
    from zpay.chains.registry import get_network
    from zpay.custody import custody_from_settings
    from zpay.services.context import AppContext, ChainSet
    from zpay.store.database import Database

    db = Database(settings.database_url, pool_size=2)
    try:
        await db.ensure_migrated()
        custody = custody_from_settings(
            settings.master_key, settings.master_key_version, settings.previous_master_keys,
            data_dir=settings.data_dir,
            allow_generated=all(get_network(name).info.local for name in settings.chains))
    except BaseException:
        await db.dispose()
        raise
    return AppContext(settings=settings, db=db, custody=custody, chains=ChainSet())


def _with_admin_context(settings: Settings, work: Callable[[AppContext], Awaitable[T]]) -> T:
    """`work` run on an admin context (`_admin_context`), whose database is closed after."""
    import asyncio

    async def run() -> T:
        ctx = await _admin_context(settings)
        try:
            return await work(ctx)
        finally:
            await ctx.db.dispose()

    return asyncio.run(run())


def _merchants_create(args: argparse.Namespace, settings: Settings) -> int:
    from zpay.services.merchants import create_merchant

    created = _with_admin_context(
        settings, lambda ctx: create_merchant(ctx, args.name, args.environment))
    if args.json:
        print(json.dumps({"id": created.merchant_id, "object": "merchant",
                          "name": created.name, "api_key": created.api_key}, indent=2))
        return 0
    print(f"merchant: {created.merchant_id}")
    print(f"secret key (shown once, store it now): {created.api_key}")
    return 0


async def _audit_context(settings: Settings) -> tuple[AppContext, dict[str, str]]:
    """Database, custody and every chain that can be opened; a chain that cannot (the
    embedded one held by a running `zpay serve`, an RPC down, a chain state that is not
    this database's) is left out with the reason, and its wallets audit as unreadable."""
    from zpay.chains.factory import build_adapter
    from zpay.services.bootstrap import pair_local_chain
    from zpay.store.relayer_journal import DbRelayerJournal

    ctx = await _admin_context(settings)
    unopened: dict[str, str] = {}
    for name in settings.chains:
        try:
            adapter = await build_adapter(name, settings, DbRelayerJournal(ctx.db))
        except Exception as exc:
            unopened[name] = getattr(exc, "code", type(exc).__name__)
            print(f"warning: cannot open {name} ({unopened[name]}): {exc}", file=sys.stderr)
            continue
        ctx.chains.adapters[name] = adapter
        try:
            await pair_local_chain(ctx, adapter)
        except Exception as exc:
            unopened[name] = "chain_not_paired"
            print(f"warning: {name}: {exc}", file=sys.stderr)
    return ctx, unopened


_AUDIT_COLUMNS = (("KEY", "session_key_id"), ("CHAIN", "chain"), ("STATE", "state"),
                  ("EXPECTED", "expected_amount"), ("ON CHAIN", "on_chain_amount"),
                  ("DIFFERENCE", "difference"), ("PAYMENTS", "involved"))


def _involved(finding: dict[str, Any]) -> str:
    """The payments behind a row: those in flight, and for a difference the latest ones."""
    def line(p: dict[str, Any]) -> str:
        return f"{p['id']} {p['status']} {p['amount']}"

    parts = [line(p) for p in finding["payments"]]
    parts += [f"approval {a['id']} {a['status']} {a['amount']}" for a in finding["approvals"]]
    recent = [line(p) for p in finding["recent_payments"] if line(p) not in parts]
    if recent:
        parts.append("latest: " + ", ".join(recent))
    if finding["error_code"]:
        parts.append(finding["error_code"])
    return "; ".join(parts) or "-"


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    """`zpay audit`: every session wallet of every merchant, books against chain, once."""
    import asyncio

    from zpay.client import console
    from zpay.domain.audit import AuditState
    from zpay.services.audit import audit_everything, finding_view, summary

    async def run() -> list[Any]:
        ctx, unopened = await _audit_context(settings)
        try:
            return await audit_everything(ctx, unopened=unopened)
        finally:
            await ctx.chains.close()
            await ctx.db.dispose()

    findings = asyncio.run(run())
    counts = summary(findings)
    views = [finding_view(f) for f in findings]
    if getattr(args, "json", False):
        console.emit_json({"object": "list", "data": views,
                           "summary": {state.value: counts[state] for state in AuditState}},
                          sys.stdout)
    else:
        shown = [{**v, "involved": _involved(v)} for v in views
                 if args.all or v["state"] != AuditState.CONSISTENT]
        if shown:
            console.table(shown, _AUDIT_COLUMNS, sys.stdout)
        print(f"audited {len(findings)} wallets: {counts[AuditState.CONSISTENT]} consistent, "
              f"{counts[AuditState.IN_FLIGHT]} in flight, "
              f"{counts[AuditState.DIFFERENCE]} differences, "
              f"{counts[AuditState.UNREADABLE]} unreadable")
    if counts[AuditState.DIFFERENCE]:
        return 1
    return 2 if counts[AuditState.UNREADABLE] else 0


def _demo(args: argparse.Namespace, _settings: Settings) -> int:
    from zpay.demo import run_demo

    return run_demo(chain=args.chain, data_dir=args.data_dir)


def _mcp(args: argparse.Namespace, _settings: Settings) -> int:
    from zpay.mcp.stdio import run

    return run(url=args.url)


# ------------------------------------------------------------------ API commands
# Each handler takes the parsed args and a `Zpay` client and returns what to print: a
# resource, `Rows` for a table, or a mapping. `_client` does the rest (client set-up,
# --json, errors → exit code 1 with the problem's message).

Handler = Callable[[argparse.Namespace, "Zpay"], Any]


def _client(handler: Handler) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, _settings: Settings) -> int:
        from zpay.client import Zpay, ZpayError, console
        from zpay.client.wallet import WalletError

        try:
            with Zpay(args.api_key, base_url=args.url, max_retries=args.retries) as z:
                value = handler(args, z)
        except (ZpayError, WalletError, OSError) as exc:
            return console.error(exc)
        if isinstance(value, int):
            return value  # the handler printed its own output
        console.show(value, as_json=args.json)
        return 0

    return run


def _rows(pager: Any, args: argparse.Namespace, item: type) -> Any:
    from zpay.client.console import Rows

    items = list(pager) if args.all else list(itertools.islice(pager, args.limit))
    return Rows(items, item)


def _expiry_seconds(hours: Decimal) -> int:
    return int(hours * 3600)


def _sign_and_submit(z: Zpay, wallet: ApprovalSigner, key_id: str, approval: Any,
                     top_up_id: str | None) -> Any:
    from zpay.client import console

    signed = wallet.sign_approval(approval)
    with console.progress(f"approval signed by {wallet.address}; waiting for the chain to "
                          "confirm the funding"):
        if top_up_id is None:
            return z.session_keys.submit_approval(key_id, signed)
        return z.session_keys.submit_top_up(key_id, top_up_id, signed)


# session keys

def _sk_create(args: argparse.Namespace, z: Zpay) -> Any:
    key = z.session_keys.create(
        args.agent_id, args.wallet, args.max_amount,
        expires_in_seconds=_expiry_seconds(args.expiry_hours), chain=args.chain,
        token=args.token, session_id=args.session_id,
        refund_on_close=False if args.no_refund else None,
        approval_method=args.approval_method)
    if not args.json:
        sys.stderr.write(f"next: the user signs the approval in their wallet (the JSON from "
                         f"`zpay session-keys status {key.id} --json`), or with a local key:\n"
                         f"  zpay session-keys approve {key.id} --keypair FILE\n")
    return key


def _sk_status(args: argparse.Namespace, z: Zpay) -> Any:
    return z.session_keys.get_status(args.id)


def _sk_approve(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import Conflict, load_wallet

    wallet = load_wallet(args.keypair)  # a bad key file fails before any request
    key = z.session_keys.get_status(args.id)
    if key.approval is None:
        raise Conflict(f"session key {args.id} is {key.status}; nothing to approve",
                       code="nothing_to_approve")
    return _sign_and_submit(z, wallet, args.id, key, None)


def _sk_submit_approval(args: argparse.Namespace, z: Zpay) -> Any:
    signed = {k: v for k, v in (("signed_transaction", args.signed_transaction),
                                ("signature", args.signature)) if v}
    from zpay.client import console

    with console.progress("waiting for the chain to confirm the funding"):
        if args.top_up_id:
            return z.session_keys.submit_top_up(args.id, args.top_up_id, signed)
        return z.session_keys.submit_approval(args.id, signed)


def _sk_top_up(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import load_wallet

    wallet = load_wallet(args.keypair) if args.keypair else None
    top_up = z.session_keys.top_up(args.id, args.amount)
    if wallet is not None:
        return _sign_and_submit(z, wallet, args.id, top_up, top_up.id)
    if not args.json:
        sys.stderr.write(f"next: the user signs this top-up (see --json), then:\n"
                         f"  zpay session-keys submit-approval {args.id} --top-up-id "
                         f"{top_up.id} --signed-transaction …\n")
    return top_up


def _sk_revoke(args: argparse.Namespace, z: Zpay) -> Any:
    key = z.session_keys.revoke(args.id)
    if not args.json and key.refund_status == "pending":
        sys.stderr.write("the remaining balance goes back to the user wallet with the next "
                         "refund run of the scheduler\n")
    return key


def _sk_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import SessionKey

    return _rows(z.session_keys.list(status=args.status, agent_id=args.agent_id,
                                     limit=_page(args)), args, SessionKey)


def _sk_link(args: argparse.Namespace, z: Zpay) -> Any:
    return z.session_keys.link_session(args.id, args.session_id)


def _sk_unlink(args: argparse.Namespace, z: Zpay) -> Any:
    return z.session_keys.unlink_session(args.id)


def _sk_can_afford(args: argparse.Namespace, z: Zpay) -> Any:
    return z.session_keys.can_afford(args.id, args.amount, recipient=args.recipient)


def _sk_attempts(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import PaymentAttempt

    return _rows(z.session_keys.attempts(args.id, limit=_page(args)), args, PaymentAttempt)


# agents

def _agents_create(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.create(args.name)


def _agents_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import Agent

    return _rows(z.agents.list(limit=_page(args)), args, Agent)


def _agents_get(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.get(args.id)


def _agents_rotate(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.rotate_token(args.id)


def _agents_freeze(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.freeze(args.id)


def _agents_unfreeze(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.unfreeze(args.id)


def _agents_delete(args: argparse.Namespace, z: Zpay) -> Any:
    return z.agents.delete(args.id)


# policy sessions

def _sessions_create(args: argparse.Namespace, z: Zpay) -> Any:
    hours = [int(h) for h in args.active_hours.split(",")] if args.active_hours else None
    return z.sessions.create(
        args.agent_id, user_wallet=args.user_wallet, token=args.token,
        max_per_transaction=args.max_per_transaction, max_per_day=args.max_per_day,
        max_per_week=args.max_per_week, max_per_month=args.max_per_month,
        max_total=args.max_total, allowed_recipients=args.allowed_recipient,
        allowed_chains=args.allowed_chain, allowed_methods=args.allowed_method,
        active_hours=hours, window_mode=args.window_mode, timezone=args.timezone,
        expires_in_seconds=(_expiry_seconds(args.expiry_hours)
                            if args.expiry_hours is not None else None))


def _sessions_get(args: argparse.Namespace, z: Zpay) -> Any:
    return z.sessions.get(args.id)


def _sessions_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import PolicySession

    return _rows(z.sessions.list(agent_id=args.agent_id, limit=_page(args)), args,
                 PolicySession)


def _sessions_revoke(args: argparse.Namespace, z: Zpay) -> Any:
    return z.sessions.revoke(args.id)


# payments

def _payments_create(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import PaymentFailed, console

    try:
        with console.progress(f"paying {args.amount} to {args.recipient}; waiting for the "
                              "chain"):
            payment = z.payments.create(args.session_key_id, args.amount, args.recipient,
                                        description=args.description,
                                        idempotency_key=args.idempotency_key)
            if payment.status == "submitted" and not args.no_wait:
                payment = z.payments.wait(payment.id, timeout_s=args.timeout)
    except PaymentFailed as failed:  # 402 with the payment inside: it ended `failed`
        payment = failed.payment
    if payment.status == "failed":
        console.show(payment, as_json=args.json)
        sys.stderr.write(f"error: the payment failed on chain ({payment.failure_code}); "
                         "the hold was released\n")
        return 1
    return payment


def _payments_get(args: argparse.Namespace, z: Zpay) -> Any:
    return z.payments.get(args.id)


def _payments_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import Payment

    return _rows(z.payments.list(session_key_id=args.session_key_id, limit=_page(args)), args,
                 Payment)


# webhooks, events, faucet

def _webhooks_create(args: argparse.Namespace, z: Zpay) -> Any:
    return z.webhooks.create(args.url, event_types=args.event_type,
                             description=args.description, enabled=not args.disabled)


def _webhooks_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import WebhookEndpoint

    return _rows(z.webhooks.list(limit=_page(args)), args, WebhookEndpoint)


def _webhooks_get(args: argparse.Namespace, z: Zpay) -> Any:
    return z.webhooks.get(args.id)


def _webhooks_delete(args: argparse.Namespace, z: Zpay) -> Any:
    return z.webhooks.delete(args.id)


def _webhooks_deliveries(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import WebhookDelivery

    return _rows(z.webhooks.deliveries(args.id, status=args.status, limit=_page(args)), args,
                 WebhookDelivery)


def _webhooks_redeliver(args: argparse.Namespace, z: Zpay) -> Any:
    return z.webhooks.redeliver(args.id)


def _events_list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import Event

    return _rows(z.events.list(type=args.type, object_id=args.object_id, limit=_page(args)),
                 args, Event)


def _faucet(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.client import console

    with console.progress(f"minting {args.amount} {args.token} to {args.wallet}"):
        return z.faucet.drip(args.wallet, args.amount, chain=args.chain, token=args.token)


def _x402_get(args: argparse.Namespace, z: Zpay) -> Any:
    """Fetch URL; a 402 is paid from the session key through zpay (within --max-amount).
    The resource's body goes to stdout, the payment to stderr."""
    import json as json_

    from zpay.client.x402 import fetch_with_payment

    headers = dict(h.split(":", 1) for h in args.header or [])
    result = fetch_with_payment(z, args.resource_url, session_key_id=args.session_key,
                                max_amount=args.max_amount, method=args.method,
                                headers={k.strip(): v.strip() for k, v in headers.items()})
    payment = result.payment
    if payment is not None:
        summary = {"payment_id": payment.id, "status": payment.status,
                   "amount": str(payment.amount), "pay_to": payment.pay_to,
                   "network": payment.network, "tx_id": payment.settlement_tx}
        sys.stderr.write(json_.dumps(summary) + "\n" if args.json else
                         f"paid {payment.amount} to {payment.pay_to} ({payment.status}, "
                         f"payment {payment.id})\n")
    sys.stdout.write(result.response.text)
    if not result.response.text.endswith("\n"):
        sys.stdout.write("\n")
    return 0 if result.response.status_code < 400 else 1


def _page(args: argparse.Namespace) -> int:
    return 100 if args.all else max(1, min(args.limit, 100))


# ------------------------------------------------------------------ the parser


def _common() -> argparse.ArgumentParser:
    """Connection and output options, accepted after any API command. SUPPRESS: a value
    given before the command (on the root parser) is not overwritten by a default here."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="zpay API base URL (env ZPAY_URL; default http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="merchant secret key or agent token (env ZPAY_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of text")
    common.add_argument("--retries", type=int, default=argparse.SUPPRESS,
                        help="retries on network errors and 503s (default 3)")
    return common


def _listing(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    parser.add_argument("--all", action="store_true", help="every row, following pages")
    return parser


class _Commands:
    """Adds `zpay GROUP VERB` API commands."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self.sub, self.common = sub, common

    def group(self, name: str, help: str) -> Any:
        return self.sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_cmd",
                                                                   required=True)

    def add(self, group: Any, name: str, handler: Handler, help: str,
            *ids: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=help,
                                                           parents=[self.common])
        for id_name in ids:
            parser.add_argument(id_name)
        parser.set_defaults(func=_client(handler))
        return parser


def _add_api_commands(sub: Any) -> None:
    c = _Commands(sub, _common())

    sk = c.group("session-keys", "funded session wallets for agents")
    p = c.add(sk, "create", _sk_create, "create a session key (pending the user's approval)")
    p.add_argument("--agent-id", required=True)
    p.add_argument("--wallet", required=True, help="the user's wallet, which funds the key")
    p.add_argument("--max-amount", required=True, help="amount to fund, e.g. 50 or 12.5")
    p.add_argument("--expiry-hours", type=Decimal, required=True)
    p.add_argument("--chain", help="network, e.g. solana-local (default: the server's)")
    p.add_argument("--token", help="token symbol (default USDC)")
    p.add_argument("--session-id", help="link to this policy session")
    p.add_argument("--approval-method", help="EVM: eip3009 (default) or transaction")
    p.add_argument("--no-refund", action="store_true",
                   help="keep what is left in the wallet when it closes")
    c.add(sk, "status", _sk_status, "show a session key's status and balances", "id")
    p = c.add(sk, "approve", _sk_approve,
              "sign the pending approval with a local key file and submit it", "id")
    p.add_argument("--keypair", required=True,
                   help="solana-keygen JSON keypair, or a file with an EVM private key (hex)")
    p = c.add(sk, "submit-approval", _sk_submit_approval,
              "submit an approval signed elsewhere (a browser wallet)", "id")
    signed = p.add_mutually_exclusive_group(required=True)
    signed.add_argument("--signed-transaction")
    signed.add_argument("--signature", help="EVM EIP-712 signature")
    p.add_argument("--top-up-id", help="the approval is for this top-up")
    p = c.add(sk, "top-up", _sk_top_up, "ask the user for more funds", "id")
    p.add_argument("--amount", required=True)
    p.add_argument("--keypair", help="sign and submit with this local key file at once")
    c.add(sk, "revoke", _sk_revoke, "revoke a session key (irreversible)", "id")
    p = _listing(c.add(sk, "list", _sk_list, "list session keys"))
    p.add_argument("--status")
    p.add_argument("--agent-id")
    p = c.add(sk, "link", _sk_link, "link a session key to a policy session", "id")
    p.add_argument("--session-id", required=True)
    c.add(sk, "unlink", _sk_unlink, "remove the policy layer from a session key", "id")
    p = c.add(sk, "can-afford", _sk_can_afford, "check a payment without paying", "id")
    p.add_argument("--amount", required=True)
    p.add_argument("--recipient")
    _listing(c.add(sk, "attempts", _sk_attempts, "the audit log of authorizations", "id"))

    ag = c.group("agents", "agents and their tokens")
    c.add(ag, "create", _agents_create, "create an agent (its token is shown once)"
          ).add_argument("--name", required=True)
    _listing(c.add(ag, "list", _agents_list, "list agents"))
    c.add(ag, "get", _agents_get, "show an agent", "id")
    c.add(ag, "rotate-token", _agents_rotate, "new token; the old one stops at once", "id")
    c.add(ag, "freeze", _agents_freeze, "refuse the agent's token until unfrozen", "id")
    c.add(ag, "unfreeze", _agents_unfreeze, "accept the agent's token again", "id")
    c.add(ag, "delete", _agents_delete, "delete an agent (its keys stay for the books)", "id")

    se = c.group("sessions", "policy sessions: limits bound to an agent")
    p = c.add(se, "create", _sessions_create, "create a policy session")
    p.add_argument("--agent-id", required=True)
    p.add_argument("--user-wallet")
    p.add_argument("--token")
    for limit in ("transaction", "day", "week", "month"):
        p.add_argument(f"--max-per-{limit}")
    p.add_argument("--max-total")
    p.add_argument("--allowed-recipient", action="append", help="repeatable")
    p.add_argument("--allowed-chain", action="append", help="repeatable")
    p.add_argument("--allowed-method", action="append", help="repeatable")
    p.add_argument("--active-hours", help="START,END local hours, e.g. 9,17")
    p.add_argument("--window-mode", choices=["rolling", "calendar"])
    p.add_argument("--timezone")
    p.add_argument("--expiry-hours", type=Decimal)
    c.add(se, "get", _sessions_get, "show a session, its windows and linked keys", "id")
    _listing(c.add(se, "list", _sessions_list, "list sessions")).add_argument("--agent-id")
    c.add(se, "revoke", _sessions_revoke, "revoke a session", "id")

    pa = c.group("payments", "payments from session keys")
    p = c.add(pa, "create", _payments_create, "pay from a session key")
    p.add_argument("--session-key-id", required=True)
    p.add_argument("--amount", required=True)
    p.add_argument("--recipient", required=True)
    p.add_argument("--description")
    p.add_argument("--idempotency-key", help="default: a new one (retries reuse it)")
    p.add_argument("--no-wait", action="store_true",
                   help="return at once if the payment is still submitted")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for a submitted payment")
    c.add(pa, "get", _payments_get, "show a payment", "id")
    _listing(c.add(pa, "list", _payments_list, "list payments")
             ).add_argument("--session-key-id")

    wh = c.group("webhooks", "webhook endpoints and deliveries")
    p = c.add(wh, "create", _webhooks_create, "add an endpoint (its secret is shown once)")
    p.add_argument("endpoint_url", metavar="URL", help="where to POST events")
    p.add_argument("--event-type", action="append", help="repeatable; default: every type")
    p.add_argument("--description")
    p.add_argument("--disabled", action="store_true")
    _listing(c.add(wh, "list", _webhooks_list, "list endpoints"))
    c.add(wh, "get", _webhooks_get, "show an endpoint", "id")
    c.add(wh, "delete", _webhooks_delete, "delete an endpoint", "id")
    _listing(c.add(wh, "deliveries", _webhooks_deliveries, "an endpoint's delivery log", "id")
             ).add_argument("--status")
    c.add(wh, "redeliver", _webhooks_redeliver, "send a delivery again now", "id")

    ev = c.group("events", "the event log")
    p = _listing(c.add(ev, "list", _events_list, "list events"))
    p.add_argument("--type")
    p.add_argument("--object-id")

    from zpay.cli_keys import add_api_key_commands

    add_api_key_commands(c)

    p = c.add(sub, "faucet", _faucet, "test tokens for a wallet (local networks only)")
    p.add_argument("--wallet", required=True)
    p.add_argument("--amount", required=True)
    p.add_argument("--chain")
    p.add_argument("--token", default="USDC")

    x4 = c.group("x402", "pay x402-protected resources from a session key")
    p = c.add(x4, "get", _x402_get, "fetch a URL, paying its 402 through zpay")
    p.add_argument("resource_url", metavar="URL")
    p.add_argument("--session-key", required=True, help="the session key to pay from")
    p.add_argument("--max-amount", required=True,
                   help="the most this request may pay, in token units (e.g. 0.05)")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", help="'Name: value', repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpay", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("ZPAY_URL") or DEFAULT_URL,
                        help="zpay API base URL (env ZPAY_URL)")
    parser.add_argument("--api-key", default=os.environ.get("ZPAY_API_KEY"),
                        help="merchant secret key or agent token (env ZPAY_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries on network errors and 503s")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-scheduler", action="store_true",
                       help="run jobs in a separate `zpay worker` instead")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes sharing the port (PostgreSQL and chains "
                            "reached over RPC only)")
    serve.set_defaults(func=_serve)
    sub.add_parser("worker", help="run the scheduled jobs (expiry, webhooks, reconciliation, "
                   "refunds) until SIGTERM/SIGINT").set_defaults(func=_worker)
    db = sub.add_parser("db", help="database administration").add_subparsers(dest="db_cmd",
                                                                               required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=_db_upgrade)
    merchants = sub.add_parser("merchants", help="merchants").add_subparsers(dest="m_cmd",
                                                                              required=True)
    mc = merchants.add_parser("create", help="create a merchant and print its key once")
    mc.add_argument("--name", required=True)
    mc.add_argument("--environment", default="test", choices=["test", "live"])
    mc.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    mc.set_defaults(func=_merchants_create)
    from zpay.cli_dashboard import add_parser as add_dashboard_user

    add_dashboard_user(merchants)
    from zpay.cli_keys import add_keys_parser

    add_keys_parser(sub)
    audit = sub.add_parser(
        "audit", help="compare every session wallet's books with the chain, once; exit 1 "
        "on a difference, 2 if some chain could not be read")
    audit.add_argument("--all", action="store_true",
                       help="list consistent wallets too (default: only the others)")
    audit.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print every finding and the summary as JSON")
    audit.set_defaults(func=_audit)
    demo = sub.add_parser("demo", help="the whole story on a local chain, in about ten seconds")
    demo.add_argument("--chain", default="solana-local",
                      help="solana-local (default) or evm-local (starts anvil)")
    demo.add_argument("--data-dir", help="keep the demo's database and chain state here "
                      "(default: a temporary directory, removed afterwards)")
    demo.set_defaults(func=_demo)
    sub.add_parser("mcp", help="serve the agent's MCP tools over stdio (env ZPAY_URL, "
                   "ZPAY_AGENT_TOKEN), for a desktop MCP client").set_defaults(func=_mcp)
    _add_api_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.from_env()))
    except Exception as exc:  # the message, not a traceback, for operators
        from zpay.custody import CustodyError
        from zpay.services.bootstrap import StartupRefused
        from zpay.store.database import NotMigrated

        if isinstance(exc, NotMigrated | StartupRefused | CustodyError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
