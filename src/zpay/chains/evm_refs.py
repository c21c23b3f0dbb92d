"""References and payloads of EVM transfers: what zpay records before it sends (pure).

A reference is all `transfer_status` gets, in any process, after any crash; it must be
enough to find the transfer's fate on chain:

- `<from>:0x<nonce>:<validBefore>` — an EIP-3009 authorization signed by a session wallet
  (payments, sweeps). (from, nonce) is what the token marks used; validBefore is when
  an unused one provably never can be.
- `<from>:0x<nonce>:<validBefore>:<digest>` — a user's EIP-3009 funding approval. The user
  holds the key and could spend the same nonce on another transfer, and renewals of one
  funding share the nonce, so "used" alone is not "funded": `digest` (of `to` and
  `value`) names the transfer that must be the one that used it.
- `tx:<hash>:<from>:<nonce>` — a user-signed EIP-1559 funding transaction (the fallback);
  its sender's nonce says when it can never be mined.

Payloads: the authorization JSON the relayer submits, or the user's raw signed bytes
(type 2, first byte 0x02; JSON starts with `{`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from zpay.chains import evm_tx
from zpay.chains.protocol import ChainError, PreparedTransfer

PAYLOAD_VERSION = 1
TX_PREFIX = "tx:"


@dataclass(frozen=True)
class AuthorizationRef:
    authorizer: str
    nonce: bytes
    valid_before: int
    digest: str | None = None  # approvals: transfer_digest(to, value) of the funding

    @property
    def key(self) -> str:
        return authorization_key(self.authorizer, self.nonce)


@dataclass(frozen=True)
class TransactionRef:
    tx_hash: str
    sender: str
    nonce: int


def authorization_key(from_address: str, nonce: bytes) -> str:
    """How the relayer journal names the authorization a relayer transaction carries."""
    return f"{from_address.lower()}:0x{nonce.hex()}"


def transfer_digest(to: str, value: int) -> str:
    return keccak(bytes.fromhex(to[2:].lower()) + value.to_bytes(32, "big"))[:8].hex()


def payment_reference(auth: evm_tx.Authorization) -> str:
    return f"{auth.from_address}:0x{auth.nonce.hex()}:{auth.valid_before}"


def approval_reference(auth: evm_tx.Authorization) -> str:
    return f"{payment_reference(auth)}:{transfer_digest(auth.to, auth.value)}"


def transaction_reference(tx_hash: str, sender: str, nonce: int) -> str:
    return f"{TX_PREFIX}{tx_hash.lower()}:{sender}:{nonce}"


def parse_reference(reference: str) -> AuthorizationRef | TransactionRef:
    try:
        if reference.startswith(TX_PREFIX):
            tx_hash, sender, nonce = reference.removeprefix(TX_PREFIX).split(":")
            if len(bytes.fromhex(tx_hash.removeprefix("0x"))) != 32:
                raise ValueError("a transaction hash is 32 bytes")
            return TransactionRef(tx_hash.lower(), evm_tx.checksum(sender), int(nonce))
        parts = reference.split(":")
        if len(parts) not in (3, 4):
            raise ValueError("expected 3 or 4 parts")
        nonce_bytes = bytes.fromhex(parts[1].removeprefix("0x"))
        if len(nonce_bytes) != 32:
            raise ValueError("nonce must be 32 bytes")
        digest = parts[3] if len(parts) == 4 else None
        if digest is not None and len(bytes.fromhex(digest)) != 8:
            raise ValueError("digest must be 8 bytes")
        return AuthorizationRef(evm_tx.checksum(parts[0]), nonce_bytes, int(parts[2]), digest)
    except (ValueError, ChainError) as exc:
        raise ChainError(f"not an EVM transfer reference: {reference!r}") from exc


def reference_of(auth: evm_tx.Authorization, reference: str) -> bool:
    """Whether `reference` is one of `auth`'s references (payment or approval form)."""
    return reference in (payment_reference(auth), approval_reference(auth))


# ------------------------------------------------------------------------ payloads


def authorization_payload(chain_id: int, token: str, signed: evm_tx.SignedAuthorization) -> bytes:
    return json.dumps(
        {
            "v": PAYLOAD_VERSION,
            "chain_id": chain_id,
            "token": token,
            "authorization": signed.authorization.to_json(),
            "signature": "0x" + (signed.r + signed.s + bytes([signed.v])).hex(),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def prepared_authorization(
    chain_id: int, token: str, signed: evm_tx.SignedAuthorization, reference: str
) -> PreparedTransfer:
    auth = signed.authorization
    return PreparedTransfer(
        reference=reference,
        payload=authorization_payload(chain_id, token, signed),
        valid_until=auth.valid_before,
        extra={
            "token": token,
            "from": auth.from_address,
            "to": auth.to,
            "nonce": "0x" + auth.nonce.hex(),
            "valid_before": auth.valid_before,
        },
    )


def decode_payload(
    payload: bytes, chain_id: int
) -> tuple[str, evm_tx.SignedAuthorization] | evm_tx.DecodedTransaction:
    """(token address, signed authorization), or the decoded raw transaction."""
    if payload[:1] == b"\x02":
        tx = evm_tx.decode_signed_transaction(payload)
        if tx.chain_id != chain_id:
            raise ChainError("the transaction is for another chain")
        return tx
    try:
        data = json.loads(payload)
        if data.get("v") != PAYLOAD_VERSION or data.get("chain_id") != chain_id:
            raise ValueError("payload is for another chain or version")
        auth = evm_tx.Authorization.from_json(data["authorization"])
        v, r, s = evm_tx.split_signature(data["signature"])
        return str(data["token"]), evm_tx.SignedAuthorization(auth, v, r, s)
    except (ValueError, KeyError, TypeError, AttributeError, ChainError) as exc:
        raise ChainError(f"not an EVM transfer payload: {exc}") from exc


# ------------------------------------------------------------------------ receipts


def transfers_from(receipt: Mapping[str, Any], token: str, sender: str) -> list[tuple[str, int]]:
    """(to, value) of every ERC-20 Transfer from `sender` that `token` logged in `receipt`."""
    found = []
    for entry in receipt.get("logs", []):
        topics = [bytes(t) for t in entry["topics"]]
        if (
            evm_tx.same_address(str(entry["address"]), token)
            and len(topics) == 3
            and topics[0] == evm_tx.TOPIC_TRANSFER
            and evm_tx.same_address("0x" + topics[1][12:].hex(), sender)
        ):
            to = evm_tx.checksum("0x" + topics[2][12:].hex())
            found.append((to, int.from_bytes(bytes(entry["data"]), "big")))
    return found


def receipt_funds(receipt: Mapping[str, Any], token: str, ref: AuthorizationRef) -> bool:
    """Whether `receipt` carries the transfer the approval `ref` stands for."""
    return any(
        transfer_digest(to, value) == ref.digest
        for to, value in transfers_from(receipt, token, ref.authorizer)
    )
