"""The MCP client configuration shown in README.md and docs/mcp.md is what `zpay mcp` reads,
and docs/mcp.md names every tool the server offers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from zpay.mcp.tools import TOOL_NAMES

ROOT = Path(__file__).resolve().parents[2]


def json_blocks(text: str) -> list[dict[str, object]]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_the_documented_client_configuration_starts_zpay_mcp() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## For agent developers", 1)[1].split("\n## ", 1)[0]
    docs = (ROOT / "docs" / "mcp.md").read_text()
    for text in (section, docs):
        configs = [b for b in json_blocks(text) if "mcpServers" in b]
        assert configs, "no MCP client configuration"
        server = configs[0]["mcpServers"]["zpay"]  # type: ignore[index]
        assert server["command"] == "zpay" and server["args"] == ["mcp"]
        assert set(server["env"]) == {"ZPAY_URL", "ZPAY_AGENT_TOKEN"}
        assert server["env"]["ZPAY_AGENT_TOKEN"].startswith("agent_")
    for name in TOOL_NAMES:
        assert f"`{name}`" in docs and f"`{name}`" in section
