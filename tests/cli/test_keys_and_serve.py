"""`zpay api-keys …` and `zpay keys rotate-master` as subprocesses; `zpay serve`'s logs."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import httpx

from tests.cli.conftest import ZPAY, Cli
from tests.support import free_port


def test_api_keys_and_master_rotation(merchant: Cli, server_env: dict[str, str]) -> None:
    created = merchant.json("api-keys", "create", "--name", "ci")
    assert created["secret"].startswith("sk_test_") and created["status"] == "active"
    second = merchant.with_key(created["secret"])
    listed = second.run("api-keys", "list").out
    assert created["id"] in listed and created["hint"] in listed
    assert created["secret"] not in listed
    rolled = second.json("api-keys", "roll", created["id"], "--overlap-seconds", "0")
    assert rolled["rolled_from"]["status"] == "revoked"
    refused = second.run("api-keys", "list", ok=False)
    assert refused.code != 0 and "invalid_credentials" in refused.err + refused.out
    third = merchant.with_key(rolled["secret"])
    assert third.json("api-keys", "get", rolled["id"])["status"] == "active"
    # the merchant's first key is still usable, so the rolled one can be revoked
    assert merchant.json("api-keys", "revoke", rolled["id"])["status"] == "revoked"

    # master key rotation, against the database (the server needs no restart to run it)
    old = server_env["ZPAY_MASTER_KEY"]
    new = base64.b64encode(secrets.token_bytes(32)).decode()
    rotate_env = {**server_env, "ZPAY_MASTER_KEY": new, "ZPAY_MASTER_KEY_VERSION": "2",
                  "ZPAY_PREVIOUS_MASTER_KEYS": f"1:{old}"}
    bad = Cli({**rotate_env, "ZPAY_PREVIOUS_MASTER_KEYS": f"1:{old},2:{old}"},
              merchant.data_dir).run("keys", "rotate-master", ok=False)
    assert bad.code == 2 and "Traceback" not in bad.err
    assert bad.err.startswith("error: ZPAY_PREVIOUS_MASTER_KEYS has an entry for version 2")
    done = Cli(rotate_env, merchant.data_dir).run("keys", "rotate-master", "--batch-size", "1")
    assert "re-wrapped under master key version 2" in done.out
    assert "ZPAY_PREVIOUS_MASTER_KEYS can be emptied" in done.out
    report = json.loads(Cli(rotate_env, merchant.data_dir).run(
        "keys", "rotate-master", "--json").out)
    assert report == {"version": 2, "rewrapped": {"wallet_secrets": 0, "webhook_endpoints": 0},
                      "batches": 0, "remaining": {}}


def test_serve_logs_where_it_listens_and_one_json_line_per_request(
        server_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "serve"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPAY_")}
    env.update({"ZPAY_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'zpay.db'}",
                "ZPAY_DATA_DIR": str(root / "data"), "ZPAY_SCHEDULER": "0",
                "ZPAY_MASTER_KEY": server_env["ZPAY_MASTER_KEY"], "ZPAY_PORT": str(port),
                "ZPAY_LOG_FORMAT": "json", "ZPAY_LOG_LEVEL": "INFO"})
    subprocess.run([str(ZPAY), "db", "upgrade"], env=env, check=True, capture_output=True)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(ZPAY), "serve"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "zpay listening" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        secret = "sk_test_" + "A" * 36
        httpx.get(f"{url}/v1/agents", headers={"Authorization": f"Bearer {secret}",
                                               "X-Request-Id": "cli-rid-1"})
        httpx.post(f"{url}/v1/agents", json={"name": "body-secret"})
        while log.read_text().count('"zpay.access"') < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(timeout=15)
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == len(text.splitlines()), text  # every line is JSON
    listening = [ln for ln in lines if ln["message"].startswith("zpay listening")]
    assert [ln["message"] for ln in listening] == [f"zpay listening on {url}"]
    access = [ln for ln in lines if ln["logger"] == "zpay.access"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("GET", "/v1/agents", 401), ("POST", "/v1/agents", 401)]
    assert access[0]["request_id"] == "cli-rid-1" and access[1]["request_id"].startswith("req_")
    assert secret not in text and "body-secret" not in text
