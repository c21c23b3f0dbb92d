"""Sign approvals with a local key, as Phantom or MetaMask would, so flows run without a browser."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.transaction import Transaction


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

    @property
    def address(self) -> str:
        return str(self.keypair.pubkey())

    def sign_approval(self, approval: dict[str, Any]) -> dict[str, str]:
        """Sign the `approval_transaction` zpay issued; returns the approval submission body."""
        raw = base64.b64decode(approval["approval_transaction"])
        tx = Transaction.from_bytes(raw)
        message = tx.message
        signers = list(message.account_keys[: message.header.num_required_signatures])
        index = signers.index(self.keypair.pubkey())
        signatures = list(tx.signatures)
        signatures[index] = self.keypair.sign_message(bytes(message))
        signed = Transaction.populate(message, signatures)
        return {"signed_transaction": base64.b64encode(bytes(signed)).decode()}
