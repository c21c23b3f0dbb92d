"""The web skeleton: assets are served from the package, with no external reference."""

from __future__ import annotations

import re

import httpx

from zpay.web import STATIC_DIR, TEMPLATES_DIR


async def test_stylesheet_is_served_from_the_package(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        resp = await http.get("/static/zpay.css")
    assert resp.status_code == 200
    assert resp.text == (STATIC_DIR / "zpay.css").read_text()


def test_no_page_or_asset_loads_anything_from_another_origin() -> None:
    external = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//""", re.I)
    for path in [*TEMPLATES_DIR.rglob("*.html"), *STATIC_DIR.rglob("*")]:
        if path.is_file() and path.suffix in {".html", ".css", ".js"}:
            assert not external.search(path.read_text()), path
