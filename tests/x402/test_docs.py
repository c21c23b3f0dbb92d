"""README's x402 snippet (the httpx helper in five lines) is valid Python whose imports
exist and whose call matches the helper's signature."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from zpay.client import x402

ROOT = Path(__file__).resolve().parents[2]


def test_readme_x402_snippet_matches_the_helper() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### x402", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(block.strip().splitlines()) == 5
    tree = ast.parse(block)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "zpay.client.x402" for alias in node.names}
    assert imported == {"fetch_with_payment"}
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", None) == "fetch_with_payment"]
    inspect.signature(x402.fetch_with_payment).bind(
        *[None] * len(call.args), **{k.arg: None for k in call.keywords if k.arg})
    assert (ROOT / "docs" / "x402.md").is_file()
