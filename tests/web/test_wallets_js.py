"""static/wallets.js against the fake wallets: discovery, connect, message signing, refusals.

The signatures the page obtains are checked in Python, so both halves (the page's module and
the fakes the other page tests rely on) are shown to speak the real protocols."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from playwright.async_api import BrowserContext, Page
from solders.pubkey import Pubkey
from solders.signature import Signature

from tests.web.fake_wallets import FakeEvmWallet, FakeSolanaWallet, install

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

RUN = """async ([family, message]) => {
  const w = await import("/static/wallets.js");
  const wallets = await w.discoverWallets(family);
  const wallet = wallets[0];
  const address = await w.connect(wallet);
  const signed = await w.signMessage(wallet, message);
  const signature = family === "solana" ? w.bytesToBase64(signed.signature) : signed.signature;
  return { names: wallets.map((x) => x.name), address, signature };
}"""


async def _page(page_context: BrowserContext, served: str, *wallets: Any) -> Page:
    await install(page_context, *wallets)
    page = await page_context.new_page()
    await page.goto(f"{served}/health")
    return page


async def test_solana_wallet_standard_connect_and_sign_message(
    page_context: BrowserContext, served: str
) -> None:
    wallet = FakeSolanaWallet()
    page = await _page(page_context, served, wallet)
    out = await page.evaluate(RUN, ["solana", "sign in to zpay"])
    assert out["names"] == ["Fake Phantom"] and out["address"] == wallet.address
    import base64

    signature = Signature.from_bytes(base64.b64decode(out["signature"]))
    assert signature.verify(Pubkey.from_string(wallet.address), b"sign in to zpay")
    assert wallet.calls == ["connect", "signMessage"]


async def test_evm_eip6963_connect_and_personal_sign(
    page_context: BrowserContext, served: str
) -> None:
    wallet = FakeEvmWallet()
    page = await _page(page_context, served, FakeSolanaWallet(), wallet)
    out = await page.evaluate(RUN, ["evm", "sign in to zpay"])
    assert out["names"] == ["Fake MetaMask"]
    assert out["address"].lower() == wallet.address.lower()
    signer = Account.recover_message(
        encode_defunct(text="sign in to zpay"), signature=out["signature"]
    )
    assert signer == wallet.address


@pytest.mark.parametrize("family", ["solana", "evm"])
async def test_rejection_in_the_wallet_is_a_rejected_error(
    page_context: BrowserContext, served: str, family: str
) -> None:
    wallet: Any = (
        FakeSolanaWallet(reject=True) if family == "solana" else FakeEvmWallet(reject=True)
    )
    page = await _page(page_context, served, wallet)
    code = await page.evaluate(
        """async (family) => {
      const w = await import("/static/wallets.js");
      const [wallet] = await w.discoverWallets(family);
      try { await w.connect(wallet); return "connected"; } catch (e) { return e.code; }
    }""",
        family,
    )
    assert code == "rejected"


async def test_no_wallet_discovers_nothing(page_context: BrowserContext, served: str) -> None:
    page = await _page(page_context, served)
    found = await page.evaluate("""async () => {
      const w = await import("/static/wallets.js");
      return [(await w.discoverWallets("solana")).length, (await w.discoverWallets("evm")).length];
    }""")
    assert found == [0, 0]


async def test_base58_round_trip(page_context: BrowserContext, served: str) -> None:
    page = await _page(page_context, served)
    key = str(Pubkey.new_unique())
    out = await page.evaluate(
        """async (key) => {
      const w = await import("/static/wallets.js");
      return w.base58Encode(w.base58Decode(key));
    }""",
        key,
    )
    assert out == key
