"""Fake browser wallets for the page tests: the page's real wallet code runs against them.

A `FakeSolanaWallet` registers itself through the Wallet Standard (the
`wallet-standard:register-wallet` / `app-ready` handshake) with `standard:connect`,
`solana:signTransaction` and `solana:signMessage`; a `FakeEvmWallet` announces an EIP-1193
provider through EIP-6963 and answers `eth_requestAccounts`, `eth_chainId`,
`wallet_switchEthereumChain`, `eth_signTypedData_v4`, `personal_sign`, `eth_signTransaction`
and `eth_sendTransaction` (any other method goes to `rpc_url`, as a wallet's node would).
The JavaScript half is injected with `add_init_script`; every signature is made in Python,
with solders / eth-account keys, through `expose_function`.

    solana = FakeSolanaWallet()                      # a fresh keypair; .address, .keypair
    evm = FakeEvmWallet(rpc_url=adapter.rpc_url)     # a fresh account; .address, .account
    await install(page_or_context, solana, evm)      # BEFORE page.goto
    solana.reject = True                             # the next requests are declined (4001)
    assert "signTransaction" not in solana.calls     # what the page asked for, in order

Install on a BrowserContext to cover every page it opens. `FakeEvmWallet(
sign_transaction_supported=False)` behaves like MetaMask, which only sends transactions.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from playwright.async_api import BrowserContext, Page
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from zpay.client.wallet import EvmWallet

_ICON = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32"'
        b' rx="8" fill="#7c5cff"/></svg>'
    ).decode()
)
_SOLANA_CHAINS = ["solana:mainnet", "solana:devnet", "solana:testnet", "solana:localnet"]
_REJECTED = {"error": {"code": 4001, "message": "User rejected the request."}}
_ids = itertools.count(1)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _short_vec(raw: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(3):
        byte = raw[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, at + i + 1
    raise ValueError("bad compact-u16")


def sign_wire_transaction(raw: bytes, keypair: Keypair) -> bytes:
    """Sign a wire-format Solana transaction (legacy or v0) in place, as a wallet does: the
    message bytes are left exactly as they came."""
    count, at = _short_vec(raw, 0)
    message = raw[at + 64 * count :]
    offset = 1 if message[0] & 0x80 else 0  # versioned messages start with 0x80 | version
    required = message[offset]
    n_keys, keys_at = _short_vec(message, offset + 3)
    signers = [
        Pubkey.from_bytes(message[keys_at + 32 * i : keys_at + 32 * (i + 1)])
        for i in range(min(required, n_keys))
    ]
    if keypair.pubkey() not in signers:
        raise ValueError(f"{keypair.pubkey()} is not a signer of this transaction")
    index = signers.index(keypair.pubkey())
    signature = bytes(keypair.sign_message(message))
    start = at + 64 * index
    return raw[:start] + signature + raw[start + 64 :]


@dataclass
class FakeSolanaWallet:
    keypair: Keypair = field(default_factory=Keypair)
    name: str = "Fake Phantom"
    reject: bool = False
    calls: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.keypair.pubkey())

    async def _handle(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(method)
        if self.reject:
            return _REJECTED
        if method == "connect":
            return {
                "result": {"address": self.address, "publicKey": _b64(bytes(self.keypair.pubkey()))}
            }
        if method == "signTransaction":
            raw = base64.b64decode(params["transaction"])
            try:
                return {"result": _b64(sign_wire_transaction(raw, self.keypair))}
            except ValueError as exc:
                return {"error": {"code": -32602, "message": str(exc)}}
        if method == "signMessage":
            message = base64.b64decode(params["message"])
            return {
                "result": {
                    "signedMessage": _b64(message),
                    "signature": _b64(bytes(self.keypair.sign_message(message))),
                }
            }
        return {"error": {"code": 4200, "message": f"unsupported: {method}"}}

    def script(self, binding: str) -> str:
        return (
            _SOLANA_JS.replace("__BINDING__", binding)
            .replace("__NAME__", json.dumps(self.name))
            .replace("__ICON__", json.dumps(_ICON))
            .replace("__CHAINS__", json.dumps(_SOLANA_CHAINS))
        )


@dataclass
class FakeEvmWallet:
    account: LocalAccount = field(default_factory=Account.create)
    name: str = "Fake MetaMask"
    rpc_url: str | None = None  # the node behind eth_sendTransaction and read calls
    chain_id: int = 31337
    sign_transaction_supported: bool = True  # False: only eth_sendTransaction, as MetaMask
    reject: bool = False
    calls: list[str] = field(default_factory=list)
    connected: bool = False

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def _signer(self) -> EvmWallet:
        return EvmWallet(bytes(self.account.key))

    async def _rpc(self, method: str, params: list[Any]) -> dict[str, Any]:
        if not self.rpc_url:
            return {"error": {"code": 4200, "message": f"no node for {method}"}}
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(
                self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            )
        body = resp.json()
        return {"error": body["error"]} if "error" in body else {"result": body.get("result")}

    def _mine(self, address: Any) -> bool:
        return str(address).lower() == self.address.lower()

    async def _handle(self, method: str, params: list[Any]) -> dict[str, Any]:
        self.calls.append(method)
        if method == "eth_chainId":
            return {"result": hex(self.chain_id)}
        if method == "eth_accounts":
            return {"result": [self.address.lower()] if self.connected else []}
        if method == "wallet_switchEthereumChain":
            self.chain_id = int(params[0]["chainId"], 16)
            return {"result": None}
        signing = (
            "eth_requestAccounts",
            "eth_signTypedData_v4",
            "personal_sign",
            "eth_signTransaction",
            "eth_sendTransaction",
        )
        if method not in signing:
            return await self._rpc(method, params)
        if self.reject:
            return _REJECTED
        if method == "eth_requestAccounts":
            self.connected = True
            return {"result": [self.address.lower()]}  # MetaMask answers lower case
        if method == "eth_signTypedData_v4":
            if not self._mine(params[0]):
                return {"error": {"code": 4100, "message": "unknown account"}}
            typed = json.loads(params[1]) if isinstance(params[1], str) else params[1]
            return {"result": self._signer.sign_typed_data(typed)}
        if method == "personal_sign":
            if not self._mine(params[1]):
                return {"error": {"code": 4100, "message": "unknown account"}}
            text = str(params[0])
            message = (
                encode_defunct(hexstr=text) if text.startswith("0x") else encode_defunct(text=text)
            )
            return {"result": self.account.sign_message(message).signature.to_0x_hex()}
        tx = params[0]
        if not self._mine(tx.get("from", self.address)):
            return {"error": {"code": 4100, "message": "unknown account"}}
        if method == "eth_signTransaction":
            if not self.sign_transaction_supported:
                return {"error": {"code": 4200, "message": "eth_signTransaction is not supported"}}
            return {"result": self._signer.sign_transaction(tx)}
        return await self._rpc("eth_sendRawTransaction", [self._signer.sign_transaction(tx)])

    def script(self, binding: str) -> str:
        return _EVM_JS.replace("__BINDING__", binding).replace(
            "__INFO__",
            json.dumps(
                {
                    "uuid": f"fake-{binding}",
                    "name": self.name,
                    "icon": _ICON,
                    "rdns": "dev.zpay.fake-evm",
                }
            ),
        )


Wallet = FakeSolanaWallet | FakeEvmWallet


async def install(target: Page | BrowserContext, *wallets: Wallet) -> None:
    """Inject `wallets` into every page `target` loads from now on (call before goto)."""
    for wallet in wallets:
        binding = f"__zpayFakeWallet{next(_ids)}"
        await target.expose_function(binding, wallet._handle)
        await target.add_init_script(script=wallet.script(binding))


_SOLANA_JS = """
(() => {
  const call = (method, params) => window["__BINDING__"](method, params);
  const b64 = (u8) => btoa(Array.from(u8, (b) => String.fromCharCode(b)).join(""));
  const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const check = (r) => {
    if (r.error) { const e = new Error(r.error.message); e.code = r.error.code; throw e; }
    return r.result;
  };
  const chains = __CHAINS__;
  let accounts = [];
  const wallet = {
    version: "1.0.0", name: __NAME__, icon: __ICON__, chains,
    get accounts() { return accounts; },
    features: {
      "standard:connect": { version: "1.0.0", connect: async () => {
        const r = check(await call("connect", {}));
        accounts = [Object.freeze({ address: r.address, publicKey: unb64(r.publicKey), chains,
          features: ["solana:signTransaction", "solana:signMessage"] })];
        return { accounts };
      } },
      "standard:disconnect": { version: "1.0.0", disconnect: async () => { accounts = []; } },
      "standard:events": { version: "1.0.0", on: () => () => {} },
      "solana:signTransaction": { version: "1.0.0", supportedTransactionVersions: ["legacy", 0],
        signTransaction: async (...inputs) => {
          const out = [];
          for (const input of inputs) {
            const signed = check(await call("signTransaction", {
              transaction: b64(input.transaction), chain: input.chain || null,
              account: input.account.address }));
            out.push({ signedTransaction: unb64(signed) });
          }
          return out;
        } },
      "solana:signMessage": { version: "1.0.0", signMessage: async (...inputs) => {
          const out = [];
          for (const input of inputs) {
            const r = check(await call("signMessage", { message: b64(input.message),
              account: input.account.address }));
            out.push({ signedMessage: unb64(r.signedMessage), signature: unb64(r.signature) });
          }
          return out;
        } },
    },
  };
  const callback = ({ register }) => register(wallet);
  window.dispatchEvent(new CustomEvent("wallet-standard:register-wallet", { detail: callback }));
  window.addEventListener("wallet-standard:app-ready", ({ detail: api }) => callback(api));
})();
"""

_EVM_JS = """
(() => {
  const listeners = {};
  const provider = {
    request: async ({ method, params }) => {
      const r = await window["__BINDING__"](method, params ?? []);
      if (r.error) { const e = new Error(r.error.message); e.code = r.error.code; throw e; }
      return r.result;
    },
    on: (event, fn) => { (listeners[event] ||= []).push(fn); return provider; },
    removeListener: (event, fn) => {
      listeners[event] = (listeners[event] || []).filter((f) => f !== fn); return provider;
    },
  };
  const info = Object.freeze(__INFO__);
  const announce = () => window.dispatchEvent(
    new CustomEvent("eip6963:announceProvider", { detail: Object.freeze({ info, provider }) }));
  window.addEventListener("eip6963:requestProvider", announce);
  announce();
})();
"""
