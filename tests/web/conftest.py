"""A real browser for the page tests: Debian's chromium driven by Playwright (async API).

`playwright install` cannot download browsers here, so Playwright is launched on the
system executable. Screenshots go to docs/screenshots/ (README links them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def chromium_path() -> str:
    path = os.environ.get("ZPAY_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("chromium not found: run `bash scripts/setup` (installs Debian's "
                           "chromium) or set ZPAY_CHROMIUM")
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def page_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(page_context: BrowserContext) -> Page:
    return await page_context.new_page()


@pytest.fixture
async def http(served: str, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the served app; a test module that waits on a chain sets a longer
    `HTTP_TIMEOUT_S`."""
    timeout = getattr(request.module, "HTTP_TIMEOUT_S", 30)
    async with httpx.AsyncClient(base_url=served, timeout=timeout) as client:
        yield client


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
