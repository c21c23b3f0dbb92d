"""Running the jobs: every `scheduler_interval_s` in the API process, or in `zpay worker`.

Each job is its own APScheduler job (coalesced, one instance at a time), so a
slow webhook endpoint never holds back expiry or reconciliation. The audit runs
every `audit_interval_s` instead: it reads balances from the chains. `run_once`
runs every job once, in an order that lets one tick carry a state change all
the way to its webhook; tests drive it with an injected clock instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from zpay.jobs.audit import run_audit
from zpay.jobs.delivery import deliver_due, dispatch_all
from zpay.jobs.expiry import expire_due
from zpay.jobs.reconcile import reconcile_payments
from zpay.jobs.refunds import run_refunds
from zpay.metrics import process_metrics
from zpay.services.context import AppContext
from zpay.services.idempotency import purge_expired
from zpay.webhooks.sender import WebhookSender

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TickReport:
    expired: int
    refunds: int
    reconciled: int
    dispatched: int
    delivered: int  # attempts made, successful or not
    audited: int = 0  # session wallets compared with the chain


async def deliver_webhooks(ctx: AppContext, *, rng: random.Random,
                           sender: WebhookSender | None = None) -> tuple[int, int]:
    return await dispatch_all(ctx), await deliver_due(ctx, rng=rng, sender=sender)


async def run_once(ctx: AppContext, *, rng: random.Random | None = None,
                   sender: WebhookSender | None = None) -> TickReport:
    """Every job once, in the order that lets one tick carry a change to its webhook:
    reconciliation frees the holds that refunds wait for, the audit sees the settled books,
    and every event goes out."""
    expired = await expire_due(ctx)
    reconciled = await reconcile_payments(ctx)
    refunds = await run_refunds(ctx)
    audited = await run_audit(ctx)
    dispatched, delivered = await deliver_webhooks(ctx, rng=rng or random.Random(),
                                                   sender=sender)
    return TickReport(expired, refunds, reconciled, dispatched, delivered, audited)


@dataclass
class _Runner:
    ctx: AppContext
    rng: random.Random = field(default_factory=random.Random)
    # Built once: loading CA certificates for every tick's sender would cost more than
    # the sends. The sender itself lives for one tick, so shutdown leaks no connections.
    ssl_context: ssl.SSLContext = field(default_factory=httpx.create_ssl_context)
    running: set[asyncio.Task[None]] = field(default_factory=set)

    async def webhooks(self) -> None:
        async with WebhookSender(verify=self.ssl_context) as sender:
            await deliver_webhooks(self.ctx, rng=self.rng, sender=sender)

    def jobs(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {"expire": lambda: expire_due(self.ctx), "refunds": lambda: run_refunds(self.ctx),
                "reconcile": lambda: reconcile_payments(self.ctx), "webhooks": self.webhooks,
                "idempotency": lambda: purge_expired(self.ctx),
                "audit": lambda: run_audit(self.ctx)}

    def interval_s(self, name: str) -> float:
        """Every job runs each `scheduler_interval_s`, but the audit, which reads balances
        from the chain's RPC: it has its own, slower `audit_interval_s`."""
        settings = self.ctx.settings
        return settings.audit_interval_s if name == "audit" else settings.scheduler_interval_s

    async def run(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        started, ok = time.monotonic(), False
        try:
            await self.jobs()[name]()
            ok = True
        except Exception:
            log.exception("job %s failed; it runs again next tick", name)
        finally:
            self.running.discard(task)
            process_metrics().job_run(name, ok, time.monotonic() - started, time.time())


class JobScheduler(AsyncIOScheduler):
    """APScheduler with zpay's jobs; `stop()` also waits for runs in progress."""

    runner: _Runner

    async def stop(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        if not self.running:
            return
        # Shutting down cancels the runs in progress, so first stop new runs and give
        # the current ones time to commit. What is cut off is not lost: its unit of work
        # rolls back, and a claimed delivery's lease brings it back.
        self.pause()
        if self.runner.running:
            await asyncio.wait(set(self.runner.running), timeout=timeout_s)
        self.shutdown(wait=False)


def start_scheduler(ctx: AppContext) -> JobScheduler:
    """Start the jobs on the running event loop, first run now."""
    # A run still going when the next is due is skipped (coalesced); with a short
    # interval and a backlog that is normal, so APScheduler's warning about it is kept
    # out of the logs. Errors still show.
    apscheduler_log = logging.getLogger("zpay.jobs.apscheduler")
    apscheduler_log.setLevel(logging.ERROR)
    scheduler = JobScheduler(timezone=UTC, logger=apscheduler_log)
    scheduler.runner = runner = _Runner(ctx)
    first = datetime.now(UTC)
    for name in runner.jobs():
        # misfire_grace_time=None: a tick delayed by a busy loop still runs (coalesced).
        scheduler.add_job(runner.run, "interval", args=[name], id=name, name=f"zpay.{name}",
                          seconds=runner.interval_s(name), next_run_time=first,
                          coalesce=True, max_instances=1, misfire_grace_time=None)
    scheduler.start()
    return scheduler


async def run_until_signalled(ctx: AppContext, *, stop: asyncio.Event | None = None) -> None:
    """`zpay worker`: run the jobs until SIGTERM or SIGINT (or `stop` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = start_scheduler(ctx)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await scheduler.stop()
