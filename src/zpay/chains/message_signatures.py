"""Check that a wallet signed a text message — what sign-in (SIWS / EIP-4361) relies on.

- Solana (`solana:signMessage`): an ed25519 signature of the message's UTF-8 bytes by the
  account's public key; passed as base64 of its 64 bytes.
- EVM (`personal_sign`, EIP-191 version 0x45): secp256k1 over
  `"\\x19Ethereum Signed Message:\\n" + len + message`; the signer is recovered and must be
  the address written in EIP-55 form. Passed as 0x-hex of r‖s‖v (65 bytes). Contract
  wallets (EIP-1271) are not supported.

Library errors stop here: a malformed signature or address is simply "not signed by".
"""

from __future__ import annotations

import base64
import binascii

from zpay.chains.protocol import Family


def signed_by(family: Family, address: str, message: str, signature: str) -> bool:
    """Whether `signature` is `address`'s signature of `message` (never raises)."""
    try:
        if family is Family.SOLANA:
            return _solana(address, message.encode(), signature)
        if family is Family.EVM:
            return _evm(address, message, signature)
    except (ValueError, TypeError, binascii.Error):
        return False
    return False


def _solana(address: str, message: bytes, signature: str) -> bool:
    from solders.pubkey import Pubkey
    from solders.signature import Signature

    raw = base64.b64decode(signature, validate=True)
    if len(raw) != 64:
        return False
    return bool(Signature.from_bytes(raw).verify(Pubkey.from_string(address), message))


def _evm(address: str, message: str, signature: str) -> bool:
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_utils import to_checksum_address

    text = signature[2:] if signature.startswith("0x") else signature
    raw = bytes.fromhex(text)
    if len(raw) != 65 or to_checksum_address(address) != address:
        return False
    try:
        recovered = Account.recover_message(encode_defunct(text=message), signature=raw)
    except Exception:  # eth_keys' BadSignature and friends: not a valid signature
        return False
    return bool(recovered == address)
