"""Observability: metrics move by exactly the workload, request ids, access log, readiness."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import active_key, merchant_api, serve
from zpay.api.observability import JsonFormatter
from zpay.client.wallet import SolanaWallet
from zpay.services.context import AppContext
from zpay.store.database import Database

Sample = tuple[str, frozenset[tuple[str, str]]]


async def scrape(http: httpx.AsyncClient) -> dict[Sample, float]:
    resp = await http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def delta(before: dict[Sample, float], after: dict[Sample, float], name: str,
          **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def moved(before: dict[Sample, float], after: dict[Sample, float],
          prefix: str) -> dict[Sample, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after
            if k[0] == prefix and after[k] != before.get(k, 0.0)}


async def test_metrics_move_by_exactly_the_workload(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        agent_api = api.as_(agent["token"])
        recipient = SolanaWallet.generate().address
        before = await scrape(http)

        for _ in range(3):
            await api.ok("GET", "/v1/agents")
        assert (await api.get("/v1/agents/agt_nope")).status_code == 404
        assert (await http.get("/no/such/route")).status_code == 404
        idem = str(uuid.uuid4())
        paid = await agent_api.pay(key["id"], "1", recipient, idem)
        assert paid.status_code == 201 and paid.json()["status"] == "succeeded", paid.text
        replay = await agent_api.pay(key["id"], "1", recipient, idem)
        assert replay.headers.get("idempotent-replayed") == "true"
        refused = await agent_api.pay(key["id"], "100", recipient)
        assert refused.status_code == 402, refused.text
        refused_code = refused.json()["code"]

        after = await scrape(http)

    requests = {(dict(k[1])["method"], dict(k[1])["route"], dict(k[1])["status"]): v
                for k, v in moved(before, after, "zpay_http_requests_total").items()
                if dict(k[1])["route"] != "/metrics"}
    assert requests == {
        ("GET", "/v1/agents", "200"): 3,
        ("GET", "/v1/agents/{agent_id}", "404"): 1,
        ("GET", "unmatched", "404"): 1,
        ("POST", "/v1/payments", "201"): 2,
        ("POST", "/v1/payments", "402"): 1,
    }
    assert delta(before, after, "zpay_http_request_duration_seconds_count",
                 method="GET", route="/v1/agents") == 3
    assert delta(before, after, "zpay_http_request_duration_seconds_count",
                 method="POST", route="/v1/payments") == 3
    # the replay is not a second payment
    payments = {tuple(sorted(dict(k[1]).items())): v
                for k, v in moved(before, after, "zpay_payments_total").items()}
    assert payments == {(("outcome", "succeeded"), ("reason", "none")): 1,
                        (("outcome", "refused"), ("reason", refused_code)): 1}
    # deployment-wide gauges, read from the database at scrape time
    assert after[("zpay_holds_outstanding", frozenset())] == 0
    assert after[("zpay_webhook_backlog", frozenset())] >= 0
    for job in ("webhooks", "dispatch", "expire", "reconcile"):
        assert ("zpay_scheduler_lag_seconds", frozenset({("job", job)})) in after


async def test_request_id_echoed_and_in_every_problem(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        resp = await http.get("/v1/agents", headers={"X-Request-Id": "trace-42.a:b"})
        assert resp.status_code == 401
        assert resp.headers["x-request-id"] == "trace-42.a:b"
        assert resp.json()["request_id"] == "trace-42.a:b"
        assert resp.headers["content-type"].startswith("application/problem+json")

        for insane in ("x" * 200, "a b", "<script>", ""):
            resp = await http.get("/nowhere", headers={"X-Request-Id": insane})
            rid = resp.headers["x-request-id"]
            assert rid != insane and rid.startswith("req_")
            assert resp.json()["request_id"] == rid

        api = await merchant_api(ctx, http)
        resp = await api.post("/v1/agents", {"name": ""})
        assert resp.status_code == 422
        assert resp.json()["request_id"] == resp.headers["x-request-id"]
        ok = await api.get("/v1/agents")
        assert ok.status_code == 200 and ok.headers["x-request-id"].startswith("req_")


async def test_one_access_line_per_request_without_secrets(
        ctx: AppContext, served: str, caplog: pytest.LogCaptureFixture) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "bot"})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="zpay.access"):
            await api.get(f"/v1/agents/{agent['id']}")
            await api.post("/v1/agents", {"name": "secret-body-value"},
                           **{"X-Request-Id": "rid-1"})
    lines = [r for r in caplog.records if r.name == "zpay.access"]
    assert Counter((r.__dict__["method"], r.__dict__["route"], r.__dict__["status"])
                   for r in lines) == {("GET", "/v1/agents/{agent_id}", 200): 1,
                                       ("POST", "/v1/agents", 201): 1}
    assert lines[-1].__dict__["request_id"] == "rid-1"
    assert all(isinstance(r.__dict__["latency_ms"], float) for r in lines)
    text = "\n".join(JsonFormatter().format(r) for r in lines)
    for secret in (api.token, agent["token"], "secret-body-value", agent["id"]):
        assert secret not in text
    doc = json.loads(JsonFormatter().format(lines[-1]))
    assert {k: doc[k] for k in ("method", "route", "status", "request_id")} == {
        "method": "POST", "route": "/v1/agents", "status": 201, "request_id": "rid-1"}
    assert doc["level"] == "info" and doc["logger"] == "zpay.access"


async def test_health_and_ready(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        ready = await http.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready",
                                "checks": {"database": "ok", "chain:solana-local": "ok"}}


async def test_ready_is_503_when_the_database_is_unreachable(ctx: AppContext) -> None:
    broken = AppContext(settings=ctx.settings, custody=ctx.custody, chains=ctx.chains,
                        db=Database("postgresql+asyncpg://zpay@127.0.0.1:1/nowhere"))
    try:
        async with serve(broken) as url, httpx.AsyncClient(base_url=url) as http:
            resp = await http.get("/ready")
            metrics = await http.get("/metrics")  # process counters still served
    finally:
        await broken.db.dispose()
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    body: dict[str, Any] = resp.json()
    assert body["checks"] == {"database": "unavailable", "chain:solana-local": "ok"}
    assert metrics.status_code == 200 and "zpay_http_requests_total" in metrics.text
    assert "zpay_holds_outstanding" not in metrics.text


async def test_job_runs_and_chain_rpc_errors_are_counted(ctx: AppContext) -> None:
    from zpay.chains.protocol import ChainUnavailable
    from zpay.jobs.scheduler import _Runner
    from zpay.metrics import process_metrics

    registry = process_metrics().registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    runs = value("zpay_scheduler_job_runs_total", job="expire", result="ok")
    errors = value("zpay_chain_rpc_errors_total", kind="ChainUnavailable")
    await _Runner(ctx).run("expire")
    ChainUnavailable("the node did not answer")
    assert value("zpay_scheduler_job_runs_total", job="expire", result="ok") == runs + 1
    assert value("zpay_scheduler_job_last_success_timestamp_seconds", job="expire") > 0
    assert value("zpay_chain_rpc_errors_total", kind="ChainUnavailable") == errors + 1


def test_multiprocess_mode_sums_every_worker(tmp_path: Any) -> None:
    """`zpay serve --workers N`: a scrape of any worker shows every worker's counters."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from zpay.metrics import prepare_multiprocess, process_metrics, render
        prepare_multiprocess(Path({str(tmp_path / "prom")!r}))
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                process_metrics().payment("succeeded", "none")
                os._exit(0)
            os.waitpid(pid, 0)
        process_metrics().payment("succeeded", "none")
        print(render(None).decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    line = next(ln for ln in out.splitlines()
                if ln.startswith("zpay_payments_total{") and 'outcome="succeeded"' in ln)
    assert float(line.rsplit(" ", 1)[1]) == 3.0, out


def test_configure_logging_honours_level_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    from zpay.api.observability import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("zpay").level)
    try:
        configure_logging("WARNING", "json")
        logging.getLogger("zpay.access").info("dropped at WARNING")
        logging.getLogger("zpay.services").warning("kept %s", 1)
        configure_logging("INFO", "text")
        logging.getLogger("zpay.access").info("kept at INFO")
        with pytest.raises(ValueError, match="ZPAY_LOG_FORMAT"):
            configure_logging("INFO", "xml")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("zpay").setLevel(saved[2])
    err = capsys.readouterr().err.splitlines()
    assert "dropped" not in "\n".join(err)
    assert json.loads(err[0])["message"] == "kept 1"
    assert err[1].endswith("INFO zpay.access: kept at INFO")
