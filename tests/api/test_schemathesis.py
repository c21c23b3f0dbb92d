"""Schemathesis over the whole API, for each token kind, on both databases: 0 server errors,
0 response-schema violations, 0 undocumented status codes or content types.

The `st` CLI runs in a subprocess against the app served in this event loop (bounded
examples, a fixed seed, positive data); its JUnit report lists every failure."""

from __future__ import annotations

import asyncio
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext

ST = Path(sys.executable).with_name("st")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


async def run_schemathesis(url: str, token: str, report: Path, max_examples: int) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        str(ST), "run", f"{url}/schema/openapi.json", "--checks", CHECKS,
        "--phases", "examples,fuzzing", "--max-examples", str(max_examples), "--seed", "1",
        "--header", f"Authorization: Bearer {token}", "--mode", "positive",
        "--exclude-path-regex", "^/(health|ready)$", "--request-timeout", "20",
        "--report", "junit", "--report-junit-path", str(report), "--no-color",
        cwd=report.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert report.exists(), text
    failures = []
    cases = list(ET.parse(report).getroot().iter("testcase"))
    assert len(cases) >= 40, text[-4000:]  # every operation was exercised
    # the token works: narrower tokens get 403 on merchant operations, never 401
    assert not re.search(r"\b401 [A-Za-z ]+\(\d+ operations?\)", text), text[-4000:]
    for case in cases:
        for failure in [*case.iter("failure"), *case.iter("error")]:
            failures.append(f"{case.get('name')}: {(failure.get('message') or '')[:300]}\n"
                            f"{(failure.text or '')[:1500]}")
    assert proc.returncode == 0 or failures, text[-4000:]
    return failures


@pytest.mark.slow
async def test_schemathesis_finds_nothing(ctx: AppContext, served: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent = await api.ok("POST", "/v1/agents", {"name": "fuzzed"})
        session = await api.ok("POST", "/v1/sessions",
                               {"agent_id": agent["id"], "max_per_transaction": "1"})
        await active_key(api, ctx, max_amount="5", agent=agent, session_id=session["id"])
    # the narrowest token first: the merchant's run may freeze or delete the agent
    tokens = {"session": session["access_token"], "agent": agent["token"],
              "merchant": api.token}
    failures: dict[str, list[str]] = {}
    for kind, token in tokens.items():
        found = await run_schemathesis(served, token, tmp_path / f"{kind}.xml", 5)
        if found:
            failures[kind] = found
    assert not failures, "\n\n".join(f"[{k}] {f}" for k, fs in failures.items() for f in fs)
