"""README's quickstarts run as written, against a live `zpay serve` process.

- Python SDK: the fenced block is extracted from README.md and run, unchanged, with
  `python -c` (the reader's `SK` and `ZPAY_URL` in the environment).
- curl: each command of the block runs in bash, its placeholders (`agt_…`, `<user wallet>`,
  …) replaced the way a reader replaces them — with what the previous answers said. The
  user approves at the `approval_url` the API answered, in Debian's chromium with a fake
  Wallet Standard wallet (the hosted page's real code path), then signs in to /me with the
  same wallet and sees the key.
- The two set-up commands stay as CI runs them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright, expect
from solders.keypair import Keypair

from tests.support import free_port
from tests.web.approval_support import approve
from tests.web.conftest import chromium_path
from tests.web.fake_wallets import FakeSolanaWallet, install

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ZPAY = Path(sys.executable).with_name("zpay")

pytestmark = pytest.mark.slow


def fenced_block(section: str, language: str) -> str:
    """The first ```language block after the heading `## {section}`."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None, section
    return match.group(1)


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines and multi-line quotes joined,
    comment-only lines dropped."""
    commands: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        if line.endswith("\\") or current.count("'") % 2:
            continue
        commands.append(current.strip())
        current = ""
    assert not current, current
    return commands


@dataclass
class Server:
    url: str
    env: dict[str, str]  # what a reader's shell has: ZPAY_* of the running server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`zpay db upgrade && zpay serve` on the embedded defaults (SQLite, solana-local)."""
    root = tmp_path_factory.mktemp("readme")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    env.update({
        "ZPAY_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'zpay.db'}",
        "ZPAY_DATA_DIR": str(root / "data"),
        "ZPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ZPAY_PORT": str(port),
    })
    subprocess.run([str(ZPAY), "db", "upgrade"], env=env, check=True, capture_output=True)
    process = subprocess.Popen([str(ZPAY), "serve"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "zpay serve did not start"
            time.sleep(0.05)
        yield Server(url, env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def new_merchant(server: Server) -> str:
    out = subprocess.run([str(ZPAY), "merchants", "create", "--name", "README shop", "--json"],
                         env=server.env, check=True, capture_output=True, text=True).stdout
    key = str(json.loads(out)["api_key"])
    assert key.startswith("sk_test_")
    return key


def test_the_setup_commands_are_what_ci_runs() -> None:
    text = README.read_text()
    assert ("<!-- run-command -->\n```bash\nbash scripts/setup && .venv/bin/zpay db upgrade && "
            ".venv/bin/zpay serve\n```") in text
    assert "<!-- test-command -->\n```bash\nbash scripts/setup && bash scripts/test\n```" in text


def test_the_python_quickstart_runs_as_written(server: Server) -> None:
    snippet = fenced_block("Quickstart (Python SDK)", "python")
    assert "sk_test_" not in snippet.replace("sk_test_…", "")  # no key to paste in
    env = {**server.env, "SK": new_merchant(server), "ZPAY_URL": server.url}
    run = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True,
                         text=True, timeout=120, check=False, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"a person would approve here: {server.url}/approve/"), lines
    assert re.fullmatch(r"succeeded \w{64,90}", lines[1]), lines  # a Solana signature
    # 30 is over the session's 25 per transaction: the pre-check says so, with its reason
    assert "allowed=False" in lines[2] and "reason='per_transaction_limit'" in lines[2], lines
    approval_page = httpx.get(lines[0].split(": ", 1)[1], timeout=10)
    assert approval_page.status_code == 200  # the link a person would have been sent


async def test_the_curl_quickstart_runs_as_written(server: Server) -> None:
    commands = shell_commands(fenced_block("Quickstart (five minutes, curl)", "bash"))
    assert len(commands) == 9, commands
    user = FakeSolanaWallet()
    shop = str(Keypair().pubkey())
    host = server.url.removeprefix("http://")
    env = dict(server.env)
    said: dict[str, Any] = {}

    def substitute(command: str) -> str:
        replacements = {"localhost:8000": host, "<user wallet>": user.address,
                        "<merchant wallet>": shop}
        for placeholder, name in (("agt_…", "agent_id"), ("agent_test_…", "agent_token"),
                                  ("ses_…", "session_id"), ("skey_…", "key_id"),
                                  ("sk_test_...", "sk")):
            if placeholder in command:
                replacements[placeholder] = said[name]
        for placeholder, value in replacements.items():
            command = command.replace(placeholder, value)
        assert "…" not in command.split("#")[0], command  # nothing left to fill in
        return command

    def run(command: str) -> str:
        out = subprocess.run(["bash", "-c", substitute(command)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout

    printed = run(commands[0])  # zpay merchants create
    said["sk"] = re.search(r"sk_test_\w+", printed).group(0)  # type: ignore[union-attr]
    assert commands[1].startswith("export SK=")
    env["SK"] = said["sk"]
    agent = json.loads(run(commands[2]))
    said["agent_id"], said["agent_token"] = agent["id"], agent["token"]
    said["session_id"] = json.loads(run(commands[3]))["id"]
    assert json.loads(run(commands[4]))["amount"].startswith("1000")
    key = json.loads(run(commands[5]))
    said["key_id"] = key["id"]
    assert key["status"] == "pending_approval"
    assert key["approval_url"].startswith(f"{server.url}/approve/")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(),
                                           args=["--no-sandbox", "--disable-gpu"])
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 900})
            await install(context, user)
            page = await context.new_page()
            await page.goto(key["approval_url"])  # what the user was sent
            await expect(page.get_by_test_id("amount")).to_have_text("500.00USDC")
            await approve(page, user.name)
            assert json.loads(run(commands[6]))["status"] == "active"

            payment = json.loads(run(commands[7]))
            assert (payment["status"], payment["amount"], payment["recipient"]) == (
                "succeeded", "19.990000", shop)
            afford = json.loads(run(commands[8]))  # 30 > 25 per transaction
            assert (afford["allowed"], afford["reason"]) == (False, "per_transaction_limit")

            # later, the user's own page: sign in with the same wallet, see the key
            await page.goto(f"{server.url}/me")
            await page.get_by_role("button", name=user.name).click()
            await page.wait_for_url(f"{server.url}/me")
            card = page.locator(f"article#{key['id']}")
            await expect(card.get_by_test_id("remaining")).to_have_text("480.01USDC")
            await expect(card.locator("tr[data-payment]")).to_have_count(1)
        finally:
            await browser.close()
