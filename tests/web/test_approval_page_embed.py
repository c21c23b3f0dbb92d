"""The approval page in a merchant's iframe: allowed for the origins of
`ZPAY_FRAME_ANCESTORS`, refused by the browser for any other.

The merchant sites are real servers on loopback ports (other origins than zpay's): Chrome
does not let a page it reached through routing alone frame a loopback address, whatever
the CSP says, so routing would not test the CSP."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.async_api import BrowserContext, expect

from tests.support import free_port
from tests.web.approval_support import TIMEOUT_MS, books_equal_chain, local, setup_key
from tests.web.fake_wallets import FakeSolanaWallet, install
from zpay.services.context import AppContext
from zpay.settings import Settings

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def shop_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, shop_port: int) -> Settings:
    return dataclasses.replace(settings, frame_ancestors=(f"http://127.0.0.1:{shop_port}",))


@contextmanager
def merchant_site(port: int, framed_url: str) -> Iterator[str]:
    """A checkout page embedding `framed_url`, served on 127.0.0.1:`port` (0: any)."""

    class Checkout(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/":
                self.send_error(404)
                return
            body = (f'<!doctype html><h1>Checkout</h1><iframe src="{framed_url}" width="660" '
                    'height="1500"></iframe>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Checkout)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_embedded_by_the_allowed_origin_only(ctx: AppContext, served: str,
                                                   page_context: BrowserContext,
                                                   shop_port: int) -> None:
    wallet = FakeSolanaWallet()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        api, _, key = await setup_key(ctx, http, wallet.address)
        url = local(served, key["approval_url"])
        head = await http.get(url)
        assert (f"frame-ancestors http://127.0.0.1:{shop_port}"
                in head.headers["content-security-policy"])
        assert "x-frame-options" not in head.headers
        await install(page_context, wallet)

        # Another site: the browser refuses to render the page in its frame.
        with merchant_site(0, url) as evil_url:
            evil = await page_context.new_page()
            await evil.goto(evil_url)
            [_, framed] = evil.frames
            assert framed.url == "chrome-error://chromewebdata/"
            assert await evil.frame_locator("iframe").get_by_test_id("amount").count() == 0

        # The merchant's own site: the page works inside its frame, wallet included.
        with merchant_site(shop_port, url) as shop_url:
            shop = await page_context.new_page()
            await shop.goto(shop_url)
            frame = shop.frame_locator("iframe")
            await expect(frame.get_by_test_id("check")).to_have_class("check ok",
                                                                      timeout=TIMEOUT_MS)
            await frame.get_by_role("button", name="Connect Fake Phantom").click()
            await frame.get_by_test_id("approve").click()
            await expect(frame.get_by_test_id("activated")).to_be_visible(timeout=TIMEOUT_MS)
        await books_equal_chain(api, ctx, key["id"], "25")
