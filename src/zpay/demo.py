"""`zpay demo`: the whole story on a local chain, with nothing running beforehand.

It migrates a SQLite database in a temporary directory, serves the real app with uvicorn
on a free loopback port (scheduler on, so refunds happen), and drives it through the
async SDK over HTTP exactly as a merchant backend and its agent would. It ends with the
merchant's books next to the chain's balances and succeeds only if they are equal.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import uvicorn

from zpay.api.app import build_context, create_app
from zpay.chains.protocol import Family
from zpay.chains.registry import get_network
from zpay.client import AsyncZpay, EvmWallet, PaymentRefused, SolanaWallet, ZpayError
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant
from zpay.settings import Settings
from zpay.store.migrate import upgrade

USER_FUNDS = Decimal(100)
KEY_FUNDING = Decimal(40)
TOP_UP = Decimal(30)
PER_TRANSACTION = Decimal(25)
PER_DAY = Decimal(60)
REFUND_WAIT_S = 30.0


@dataclass(frozen=True)
class BooksRow:
    holder: str
    address: str
    books: Decimal
    chain: Decimal

    @property
    def equal(self) -> bool:
        return self.books == self.chain


class Narrator:
    def __init__(self, out: TextIO) -> None:
        self.out, self.n = out, 0
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        self.n += 1
        self.out.write(f"\n{self.n:>2}. {title}\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(f"    {text}\n")
        self.out.flush()


def run_demo(chain: str = "solana-local", data_dir: str | None = None,
             out: TextIO | None = None) -> int:
    """Run the story; 0 only if the books equal the chain at the end."""
    out = out or sys.stdout
    if not get_network(chain).info.local:
        out.write(f"error: the demo runs on a local network (solana-local, evm-local), "
                  f"not {chain}\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="zpay-demo-") as tmp:
        base = Path(data_dir) if data_dir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{base / 'zpay.db'}", data_dir=base,
            chains=(chain,), default_chain=chain, scheduler_enabled=True,
            # A short tick: the refund after the revoke should not keep the story waiting.
            scheduler_interval_s=0.2, log_level="WARNING")
        narrator = Narrator(out)
        out.write(f"zpay demo on {chain}: data in {base}\n")
        upgrade(settings.database_url)  # Alembic runs its own event loop: before ours
        # With a 0.2 s tick, a tick that finds the previous one still sweeping is skipped;
        # APScheduler warns about each. Expected here, so not worth the reader's attention.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        try:
            rows = asyncio.run(_run(settings, narrator))
        except ZpayError as exc:
            out.write(f"\nerror: {exc}\n")
            return 1
    return 0 if all(r.equal for r in rows) else 1


@asynccontextmanager
async def _served(settings: Settings) -> AsyncIterator[tuple[str, AppContext]]:
    """The real app on a loopback port, in this event loop; yields (base URL, context)."""
    ctx = await build_context(settings)
    # Bound here and handed to uvicorn: no window in which another process takes the port.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(context=ctx), log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        server.should_exit = True
        await task
        sock.close()
        await ctx.chains.close()
        await ctx.db.dispose()


async def _run(settings: Settings, say: Narrator) -> list[BooksRow]:
    chain = settings.default_chain
    async with _served(settings) as (url, ctx):
        say.step("A merchant signs up")
        merchant = await create_merchant(ctx, "Demo Bookshop")
        say.say(f"merchant {merchant.merchant_id}, secret key {merchant.api_key[:12]}… "
                f"(API at {url})")
        async with AsyncZpay(merchant.api_key, base_url=url) as z:
            return await _story(z, ctx, chain, say)


async def _story(z: AsyncZpay, ctx: AppContext, chain: str,
                 say: Narrator) -> list[BooksRow]:
    adapter = ctx.chains.get(chain)
    token = adapter.token("USDC")
    evm = adapter.network.family is Family.EVM
    user: SolanaWallet | EvmWallet = EvmWallet.generate() if evm else SolanaWallet.generate()
    shop = (EvmWallet.generate() if evm else SolanaWallet.generate()).address

    async def on_chain(address: str) -> Decimal:
        return Decimal(await adapter.balance(address, token)).scaleb(-token.decimals)

    say.step("The merchant creates an agent")
    agent = await z.agents.create("shopping-agent")
    assert agent.token is not None
    say.say(f"agent {agent.id}, token {agent.token[:16]}… (the agent's only credential)")

    say.step("A user with a wallet (test funds from the local faucet)")
    drip = await z.faucet.drip(user.address, USER_FUNDS, chain=chain)
    say.say(f"user wallet {user.address}: {drip.balance} USDC")

    say.step("A policy session: the limits the agent must stay within")
    session = await z.agents.create_session(agent.id, max_per_transaction=PER_TRANSACTION,
                                            max_per_day=PER_DAY, expires_in_seconds=3600)
    say.say(f"session {session.id}: at most {session.max_per_transaction} per payment, "
            f"{session.max_per_day} per rolling day")

    say.step(f"A session key: a dedicated wallet for the agent, to hold {KEY_FUNDING} USDC")
    key = await z.session_keys.create(agent.id, user.address, KEY_FUNDING,
                                      expires_in_seconds=3600, chain=chain,
                                      session_id=session.id)
    say.say(f"session key {key.id} ({key.status}), wallet {key.session_key_address}")
    say.say(f"linked to {key.linked_session_id}: a payment must pass both layers")

    say.step("The user signs ONE approval in their wallet; zpay submits it")
    started = time.monotonic()
    key = await z.session_keys.submit_approval(key.id, user.sign_approval(key))
    say.say(f"{key.status}: funded {key.funded_amount} USDC on chain in "
            f"{time.monotonic() - started:.2f}s; the user's master key never left the wallet")

    az = z.with_token(agent.token)
    say.step("The agent shops with its own token")
    await _pay(az, key.id, Decimal(30), shop, say, "a 30 USDC basket")
    await _pay(az, key.id, Decimal(25), shop, say, "a 25 USDC book")
    await _pay(az, key.id, Decimal(15), shop, say, "a 15 USDC book")
    await _pay(az, key.id, Decimal(5), shop, say, "one more 5 USDC item")
    key = await z.session_keys.get_status(key.id)
    say.say(f"key is {key.status}: spent {key.spent_amount} of {key.funded_amount}")

    say.step(f"The user tops the key up by {TOP_UP} USDC (one more signature)")
    top_up = await z.session_keys.top_up(key.id, TOP_UP)
    key = await z.session_keys.submit_top_up(key.id, top_up.id, user.sign_approval(top_up))
    say.say(f"{key.status}: funded {key.funded_amount}, remaining {key.remaining_amount}")

    say.step("The policy still applies to the new funds")
    await _pay(az, key.id, Decimal(25), shop, say, "a 25 USDC book")
    check = await az.session_keys.can_afford(key.id, Decimal(20))
    say.say(f"can_afford(20): allowed={check.allowed}, left today "
            f"{check.session_remaining_today}, left in the key {check.session_key_remaining}")
    await _pay(az, key.id, Decimal(20), shop, say, "a 20 USDC book")

    say.step("The merchant revokes the key; what is left goes back to the user")
    key = await z.session_keys.revoke(key.id)
    say.say(f"{key.status}; refund {key.refund_status}")
    await _pay(az, key.id, Decimal(1), shop, say, "a late 1 USDC item")
    if key.refund_status is not None:
        try:
            key = await z.session_keys.wait_for_refund(key.id, timeout_s=REFUND_WAIT_S,
                                                       poll_s=0.2)
            say.say(f"refund {key.refund_status}: {key.refunded_amount} USDC back to "
                    f"{key.user_wallet}")
        except ZpayError:
            key = await z.session_keys.get_status(key.id)
            say.say(f"refund still {key.refund_status}; it arrives with the scheduler's "
                    "next run")
    say.say("the audit log, oldest first (every attempt, allowed or refused):")
    for attempt in reversed(await z.session_keys.attempts(key.id).to_list()):
        say.say(f"  {attempt.amount:>12f}  {attempt.reason}")

    say.step("The books next to the chain")
    payments = await z.payments.list(session_key_id=key.id).to_list()
    paid = sum((p.amount for p in payments if p.status == "succeeded"), Decimal(0))
    rows = [
        BooksRow("user wallet", user.address,
                 USER_FUNDS - key.funded_amount + key.refunded_amount,
                 await on_chain(user.address)),
        BooksRow("session wallet", key.session_key_address,
                 key.funded_amount - key.spent_amount - key.refunded_amount,
                 await on_chain(key.session_key_address)),
        BooksRow("merchant wallet", shop, paid, await on_chain(shop)),
    ]
    rows.append(BooksRow("total", "-", sum((r.books for r in rows), Decimal(0)),
                         sum((r.chain for r in rows), Decimal(0))))
    _books_table(rows, say)
    ok = all(r.equal for r in rows)
    say.out.write(f"\n{'books == chain' if ok else 'BOOKS DIFFER FROM THE CHAIN'} "
                  f"({time.monotonic() - say.started:.1f}s)\n")
    return rows


async def _pay(az: AsyncZpay, key_id: str, amount: Decimal, to: str, say: Narrator,
               what: str) -> None:
    try:
        payment = await az.payments.create(key_id, amount, to, description=what)
    except PaymentRefused as refused:
        say.say(f"✗ {what}: refused, {refused.code} — {refused.detail}")
        return
    if payment.status == "submitted":
        payment = await az.payments.wait(payment.id)
    mark = "✓" if payment.status == "succeeded" else "✗"
    say.say(f"{mark} {what}: {payment.status} (tx {_short(payment.tx_id)})")


def _short(tx_id: str | None) -> str:
    return "-" if not tx_id else (tx_id if len(tx_id) <= 20 else f"{tx_id[:10]}…{tx_id[-6:]}")


def _books_table(rows: list[BooksRow], say: Narrator) -> None:
    header = ("holder", "address", "books (USDC)", "chain (USDC)", "")
    cells = [header] + [(r.holder, r.address, f"{r.books:f}", f"{r.chain:f}",
                         "=" if r.equal else "≠") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for cell in cells:
        say.say("  ".join(v.ljust(w) for v, w in zip(cell, widths, strict=True)).rstrip())


def books_from_output(text: str) -> list[tuple[str, Decimal, Decimal]]:
    """Parse the final table back (for tests and scripts): (holder, books, chain)."""
    rows = []
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("holder"))
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) < 5:
            break
        holder = " ".join(parts[:-4])
        rows.append((holder, Decimal(parts[-3]), Decimal(parts[-2])))
    return rows
