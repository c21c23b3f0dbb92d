"""Sign approvals with a local key, as Phantom or MetaMask would, so flows run without a browser.

`sign_approval` takes what zpay issued — a `SessionKey` or `Approval` from the SDK, or the
raw JSON dict — and returns the body of `submit_approval` / `submit_top_up`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from solders.keypair import Keypair
from solders.transaction import Transaction

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


class _HasRaw(Protocol):
    @property
    def raw(self) -> dict[str, Any]: ...


ApprovalLike = Mapping[str, Any] | _HasRaw


class ApprovalSigner(Protocol):
    """Anything that signs an issued approval: these helpers, or your own wallet bridge."""

    @property
    def address(self) -> str: ...

    def sign_approval(self, approval: Any) -> dict[str, str]: ...


def _payload(approval: ApprovalLike) -> Mapping[str, Any]:
    if isinstance(approval, Mapping):
        return approval
    return approval.raw


class WalletError(ValueError):
    """The approval cannot be signed by this wallet (wrong chain family, not a signer)."""


class SolanaWallet:
    def __init__(self, keypair: Keypair) -> None:
        self.keypair = keypair

    @classmethod
    def generate(cls) -> SolanaWallet:
        return cls(Keypair())

    @classmethod
    def from_file(cls, path: str | Path) -> SolanaWallet:
        """A keypair file as written by `solana-keygen` (a JSON array of 64 bytes)."""
        return cls(Keypair.from_bytes(bytes(json.loads(Path(path).read_text()))))

    def to_file(self, path: str | Path) -> None:
        """Write the keypair as `solana-keygen` does; readable by the owner only."""
        target = Path(path)
        target.touch(mode=0o600, exist_ok=True)
        target.write_text(json.dumps(list(bytes(self.keypair))))

    @property
    def address(self) -> str:
        return str(self.keypair.pubkey())

    def sign_approval(self, approval: ApprovalLike) -> dict[str, str]:
        """Sign the `approval_transaction` zpay issued; returns the approval submission body."""
        payload = _payload(approval)
        if "approval_transaction" not in payload:
            raise WalletError("not a Solana approval (no approval_transaction)")
        raw = base64.b64decode(payload["approval_transaction"])
        tx = Transaction.from_bytes(raw)
        message = tx.message
        signers = list(message.account_keys[: message.header.num_required_signatures])
        if self.keypair.pubkey() not in signers:
            raise WalletError(f"{self.address} is not a signer of this approval")
        index = signers.index(self.keypair.pubkey())
        signatures = list(tx.signatures)
        signatures[index] = self.keypair.sign_message(bytes(message))
        signed = Transaction.populate(message, signatures)
        return {"signed_transaction": base64.b64encode(bytes(signed)).decode()}


class EvmWallet:
    """An EVM account from a private key. EIP-712 `typed_data` approvals (EIP-3009, no gas
    for the user) give `{"signature"}`; an `unsigned_transaction` fallback gives
    `{"signed_transaction"}` (the user's account pays its gas)."""

    def __init__(self, private_key: bytes | str) -> None:
        if isinstance(private_key, str):
            text = private_key.strip()
            private_key = bytes.fromhex(text[2:] if text.startswith("0x") else text)
        if len(private_key) != 32:
            raise WalletError("an EVM private key is 32 bytes")
        self._key = private_key
        self._account: LocalAccount | None = None

    @classmethod
    def generate(cls) -> EvmWallet:
        from eth_account import Account

        return cls(bytes(Account.create().key))

    @classmethod
    def from_file(cls, path: str | Path) -> EvmWallet:
        """A file holding the private key as hex (0x-prefixed or not)."""
        return cls(Path(path).read_text())

    def to_file(self, path: str | Path) -> None:
        target = Path(path)
        target.touch(mode=0o600, exist_ok=True)
        target.write_text(self.private_key_hex + "\n")

    @property
    def private_key_hex(self) -> str:
        return "0x" + self._key.hex()

    @property
    def account(self) -> LocalAccount:
        # eth_account costs ~0.8 s to import: only scripts that use an EVM key pay for it.
        if self._account is None:
            from eth_account import Account

            self._account = Account.from_key(self._key)
        return self._account

    @property
    def address(self) -> str:
        return str(self.account.address)

    def sign_approval(self, approval: ApprovalLike) -> dict[str, str]:
        payload = _payload(approval)
        if "typed_data" in payload:
            return {"signature": self.sign_typed_data(payload["typed_data"])}
        if "unsigned_transaction" in payload:
            return {"signed_transaction": self.sign_transaction(payload["unsigned_transaction"])}
        raise WalletError("not an EVM approval (no typed_data or unsigned_transaction)")

    def sign_typed_data(self, typed_data: Mapping[str, Any]) -> str:
        """What `eth_signTypedData_v4` does: sign EIP-712 JSON (uints may be decimal strings)."""
        from eth_account import Account
        from eth_account.messages import encode_typed_data

        full = _typed_data_with_ints(typed_data)
        signable = encode_typed_data(full_message=full)
        signed = Account.sign_message(signable, self._key)
        return "0x" + bytes(signed.signature).hex()

    def sign_transaction(self, transaction: Mapping[str, Any]) -> str:
        """What `eth_signTransaction` does, for the JSON-RPC transaction object zpay issued."""
        tx = _signable_transaction(transaction)
        sender = transaction.get("from")
        if sender and str(sender).lower() != self.address.lower():
            raise WalletError(f"the transaction is from {sender}, not {self.address}")
        signed = self.account.sign_transaction(tx)
        return "0x" + bytes(signed.raw_transaction).hex()


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise WalletError("a boolean where an integer was expected")
    if isinstance(value, int):
        return value
    return int(str(value), 0)  # decimal or 0x-hex, as JSON-RPC and EIP-712 JSON carry them


def _typed_data_with_ints(typed_data: Mapping[str, Any]) -> dict[str, Any]:
    """Wallet JSON carries uint256 as strings (JavaScript numbers lose precision above
    2**53); eth_account wants Python ints."""
    types: Mapping[str, Any] = typed_data["types"]

    def convert(type_name: str, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for f in types.get(type_name, []):
            name, kind = f["name"], f["type"]
            if name not in out:
                continue
            if kind.startswith(("uint", "int")) and not kind.endswith("]"):
                out[name] = _as_int(out[name])
            elif kind in types:
                out[name] = convert(kind, out[name])
        return out

    return {**typed_data, "domain": convert("EIP712Domain", typed_data["domain"]),
            "message": convert(typed_data["primaryType"], typed_data["message"])}


def _signable_transaction(tx: Mapping[str, Any]) -> dict[str, Any]:
    quantities = ("chainId", "nonce", "value", "gas", "maxFeePerGas", "maxPriorityFeePerGas")
    out: dict[str, Any] = {k: _as_int(tx[k]) for k in quantities if k in tx}
    out["type"] = _as_int(tx.get("type", 2))
    out["to"] = tx["to"]
    data = str(tx.get("data") or tx.get("input") or "0x")
    out["data"] = bytes.fromhex(data[2:] if data.startswith("0x") else data)
    out["accessList"] = list(tx.get("accessList") or [])
    return out


def load_wallet(path: str | Path) -> SolanaWallet | EvmWallet:
    """A Solana keypair file (JSON array of 64 bytes) or an EVM private key file (hex)."""
    text = Path(path).read_text().strip()
    if text.startswith("["):
        return SolanaWallet.from_file(path)
    try:
        return EvmWallet(text)
    except ValueError as exc:
        raise WalletError(f"{path}: neither a solana-keygen JSON keypair nor an EVM private "
                          "key in hex") from exc
