"""No Docker engine runs here: check the compose file parses and names what it must."""

from __future__ import annotations

import pathlib
import re

import yaml

from zpay.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_images_and_health_checks() -> None:
    services = load()["services"]
    assert set(services) >= {"postgres", "anvil", "solana-validator", "api", "worker"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert "foundry" in services["anvil"]["image"]
    assert "solana-test-validator" in services["solana-validator"]["entrypoint"]
    assert "zpay db upgrade" in " ".join(services["api"]["command"])
    assert services["worker"]["command"] == ["zpay", "worker"]
    for name in ("postgres", "anvil", "solana-validator", "api"):
        assert "healthcheck" in services[name], name
    assert (ROOT / "Dockerfile").exists()


def test_every_variable_is_a_real_setting_and_documented() -> None:
    services = load()["services"]
    readme = (ROOT / "README.md").read_text()
    names = set(services["api"]["environment"]) | set(services["worker"]["environment"])
    zpay_vars = {n for n in names if n.startswith("ZPAY_")}
    assert {"ZPAY_DATABASE_URL", "ZPAY_MASTER_KEY", "ZPAY_EVM_RELAYER_KEY"} <= zpay_vars
    env = {n: "x" for n in zpay_vars}
    env |= {"ZPAY_PORT": "1", "ZPAY_MASTER_KEY_VERSION": "1"}
    Settings.from_env(env)  # every variable parses
    for var in zpay_vars:
        if not var.startswith("ZPAY_RPC_URL_"):
            assert f"`{var}`" in readme, f"{var} is not documented in README.md"
    assert "`ZPAY_RPC_URL_<NETWORK>`" in readme
    text = (ROOT / "docker-compose.yml").read_text()
    for required in re.findall(r"\$\{(\w+):\?", text):
        assert required in text.split("services:")[0], required  # explained in the header
