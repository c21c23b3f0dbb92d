"""Prometheus metrics: what this process counted, and what the database shows at scrape time.

Two kinds of series:

- Counters and histograms of THIS process (HTTP requests, payment outcomes, rate-limit
  refusals, webhook attempts, scheduler runs, chain RPC errors). They live in one registry
  per process (`process_metrics()`), created on first use. `zpay serve` runs one process, so
  each replica is scraped on its own `/metrics` and Prometheus sums over instances. Under a
  multi-process server that sets `PROMETHEUS_MULTIPROC_DIR`, prometheus-client's
  multiprocess mode is used instead and one scrape covers every worker.
- Gauges read from the database when `/metrics` is scraped (holds outstanding, webhook
  backlog, how late each job is on its work). They describe the whole deployment, so every
  replica reports the same values: aggregate them with `max`, not `sum`.

Labels are bounded and never carry a secret: route TEMPLATES (not paths), status codes,
stable reason codes, job and chain names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ProcessMetrics", "process_metrics", "render"]

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ProcessMetrics:
    registry: CollectorRegistry
    http_requests: Counter
    http_latency: Histogram
    payments: Counter
    rate_limited: Counter
    webhook_attempts: Counter
    webhook_latency: Histogram
    webhook_delivery_delay: Histogram
    job_runs: Counter
    job_duration: Histogram
    job_last_success: Gauge
    chain_rpc_errors: Counter

    def payment(self, outcome: str, reason: str) -> None:
        self.payments.labels(outcome=outcome, reason=reason).inc()

    def webhook_attempt(self, ok: bool, latency_ms: int, delay_s: float | None) -> None:
        """One HTTP attempt to a webhook endpoint; `delay_s`: event written → delivered."""
        outcome = "succeeded" if ok else "failed"
        self.webhook_attempts.labels(outcome=outcome).inc()
        self.webhook_latency.labels(outcome=outcome).observe(latency_ms / 1000)
        if ok and delay_s is not None:
            self.webhook_delivery_delay.observe(max(delay_s, 0.0))

    def job_run(self, job: str, ok: bool, duration_s: float, finished_at: float) -> None:
        self.job_runs.labels(job=job, result="ok" if ok else "error").inc()
        self.job_duration.labels(job=job).observe(duration_s)
        if ok:
            self.job_last_success.labels(job=job).set(finished_at)

    def chain_rpc_error(self, kind: str) -> None:
        self.chain_rpc_errors.labels(kind=kind).inc()


def _build() -> ProcessMetrics:
    registry = CollectorRegistry(auto_describe=True)
    kw: dict[str, Any] = {"registry": registry}
    return ProcessMetrics(
        registry=registry,
        http_requests=Counter("zpay_http_requests", "HTTP requests answered, by route template",
                              ["method", "route", "status"], **kw),
        http_latency=Histogram("zpay_http_request_duration_seconds",
                               "Time to answer an HTTP request, by route template",
                               ["method", "route"], buckets=_LATENCY_BUCKETS_S, **kw),
        payments=Counter("zpay_payments", "Payment attempts answered by POST /v1/payments, by "
                         "outcome (succeeded, submitted, failed, refused, error) and reason code",
                         ["outcome", "reason"], **kw),
        rate_limited=Counter("zpay_rate_limited", "Requests refused with 429, by limit "
                             "(token, address, refusals)", ["limit"], **kw),
        webhook_attempts=Counter("zpay_webhook_attempts", "Webhook HTTP attempts, by outcome",
                                 ["outcome"], **kw),
        webhook_latency=Histogram("zpay_webhook_attempt_duration_seconds",
                                  "Time a webhook endpoint took to answer", ["outcome"],
                                  buckets=_LATENCY_BUCKETS_S, **kw),
        webhook_delivery_delay=Histogram(
            "zpay_webhook_delivery_delay_seconds",
            "From the event being written to its successful delivery",
            buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0), **kw),
        job_runs=Counter("zpay_scheduler_job_runs", "Scheduler job runs, by job and result",
                         ["job", "result"], **kw),
        job_duration=Histogram("zpay_scheduler_job_duration_seconds", "Scheduler job run time",
                               ["job"], buckets=_LATENCY_BUCKETS_S, **kw),
        job_last_success=Gauge("zpay_scheduler_job_last_success_timestamp_seconds",
                               "Unix time of the job's last successful run in this process",
                               ["job"], multiprocess_mode="max", **kw),
        chain_rpc_errors=Counter("zpay_chain_rpc_errors", "Chain RPC calls that failed "
                                 "(unreachable node, refused or unreadable answer), by kind",
                                 ["kind"], **kw),
    )


_METRICS: list[ProcessMetrics] = []


def process_metrics() -> ProcessMetrics:
    """This process's metrics, created on first use (one set per process, as Prometheus
    expects: a scrape of one process returns its own counters)."""
    if not _METRICS:
        _METRICS.append(_build())
    return _METRICS[0]


@dataclass(frozen=True)
class DatabaseGauges:
    """Values read from the database at scrape time (see `zpay.api.observability`)."""

    holds_outstanding: int
    held_base_units: dict[tuple[str, str], int]  # (chain, token) → sum of held amounts
    webhook_backlog: int
    webhook_backlog_oldest_s: float
    job_lag_s: dict[str, float]  # job → how overdue its oldest due item is


def _gauge_registry(gauges: DatabaseGauges) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    Gauge("zpay_holds_outstanding", "Payments holding funds (authorized or submitted)",
          registry=registry).set(gauges.holds_outstanding)
    held = Gauge("zpay_held_base_units", "Sum of amounts on hold, in token base units",
                 ["chain", "token"], registry=registry)
    for (chain, token), amount in sorted(gauges.held_base_units.items()):
        held.labels(chain=chain, token=token).set(amount)
    Gauge("zpay_webhook_backlog", "Webhook deliveries not yet delivered (pending)",
          registry=registry).set(gauges.webhook_backlog)
    Gauge("zpay_webhook_backlog_oldest_seconds", "Age of the oldest pending webhook delivery",
          registry=registry).set(gauges.webhook_backlog_oldest_s)
    lag = Gauge("zpay_scheduler_lag_seconds", "How overdue the oldest item waiting for a "
                "job is (0: nothing overdue)", ["job"], registry=registry)
    for job, seconds in sorted(gauges.job_lag_s.items()):
        lag.labels(job=job).set(seconds)
    return registry


def render(gauges: DatabaseGauges | None) -> bytes:
    """The text exposition of this process's metrics (or every worker's, in multiprocess
    mode) followed by the database gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        out = generate_latest(registry)
    else:
        out = generate_latest(process_metrics().registry)
    if gauges is not None:
        out += generate_latest(_gauge_registry(gauges))
    return out


def prepare_multiprocess(directory: Path) -> None:
    """For a server that forks or spawns several worker processes: call before they start.
    Each worker then writes its counters to `directory` and `/metrics` in any of them
    aggregates every worker's (prometheus-client's multiprocess mode)."""
    from prometheus_client import values

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # chosen at import, maybe before this


def seconds_since(then: datetime | None, now: datetime) -> float:
    return max((now - then).total_seconds(), 0.0) if then is not None else 0.0
