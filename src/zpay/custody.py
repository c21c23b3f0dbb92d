"""Envelope encryption of session-wallet secrets.

Each wallet has its own random AES-256-GCM data key. The secret is encrypted with the
data key, the data key is wrapped with the master key. Both ciphertexts bind the wallet id
and the key version as associated data, so a ciphertext copied to another row fails to
decrypt. Rotating the master key re-wraps data keys; wallet secrets are untouched.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_LEN = 12
_DATA_KEY_VERSION = 1  # the format of the secret ciphertext; data keys are never rotated


class CustodyError(Exception):
    code = "custody_error"


@dataclass(frozen=True)
class SealedSecret:
    key_version: int  # master key version that wrapped the data key
    wrapped_data_key: bytes  # nonce || AES-GCM(master, data_key)
    ciphertext: bytes  # nonce || AES-GCM(data_key, secret)


def _aad(wallet_id: str, purpose: str, version: int) -> bytes:
    return f"zpay/{purpose}/v{version}/{wallet_id}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_LEN], sealed[_NONCE_LEN:], aad)
    except InvalidTag:
        raise CustodyError("wallet secret failed authentication") from None


class Custody:
    def __init__(self, master_keys: Mapping[int, bytes], current_version: int) -> None:
        if current_version not in master_keys:
            raise CustodyError("the current master key version has no key")
        for key in master_keys.values():
            if len(key) != 32:
                raise CustodyError("master keys must be 32 bytes")
        self._keys = dict(master_keys)
        self.current_version = current_version

    @property
    def versions(self) -> frozenset[int]:
        """Every master key version this custody can unwrap (current and previous)."""
        return frozenset(self._keys)

    def seal(self, wallet_id: str, secret: bytes) -> SealedSecret:
        data_key = AESGCM.generate_key(bit_length=256)
        version = self.current_version
        wrapped = _seal(self._keys[version], data_key, _aad(wallet_id, "dek", version))
        ciphertext = _seal(data_key, secret, _aad(wallet_id, "secret", _DATA_KEY_VERSION))
        return SealedSecret(version, wrapped, ciphertext)

    def open(self, wallet_id: str, sealed: SealedSecret) -> bytes:
        master = self._keys.get(sealed.key_version)
        if master is None:
            raise CustodyError(f"no master key of version {sealed.key_version} is configured")
        data_key = _open(
            master, sealed.wrapped_data_key, _aad(wallet_id, "dek", sealed.key_version)
        )
        return _open(data_key, sealed.ciphertext, _aad(wallet_id, "secret", _DATA_KEY_VERSION))

    def derived_keys(self, purpose: str) -> list[bytes]:
        """32-byte keys for one purpose (e.g. signing approval links), derived with HKDF
        from each master key: the current one first (to sign), then the previous ones (still
        accepted while a rotation is under way). A derived key reveals nothing of the
        master key, and each purpose gets its own."""
        versions = [self.current_version,
                    *sorted((v for v in self._keys if v != self.current_version), reverse=True)]
        return [HKDF(algorithm=SHA256(), length=32, salt=None,
                     info=f"zpay/{purpose}/v{v}".encode()).derive(self._keys[v])
                for v in versions]

    def rewrap(self, wallet_id: str, sealed: SealedSecret) -> SealedSecret:
        """Re-wrap the data key under the current master key; the secret ciphertext is kept."""
        if sealed.key_version == self.current_version:
            return sealed
        master = self._keys[sealed.key_version]
        data_key = _open(
            master, sealed.wrapped_data_key, _aad(wallet_id, "dek", sealed.key_version)
        )
        version = self.current_version
        wrapped = _seal(self._keys[version], data_key, _aad(wallet_id, "dek", version))
        return SealedSecret(version, wrapped, sealed.ciphertext)


def _decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise CustodyError("ZPAY_MASTER_KEY must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise CustodyError("ZPAY_MASTER_KEY must be base64 of 32 bytes")
    return key


def custody_from_settings(
    master_key: str, version: int, previous: str, *, data_dir: Path, allow_generated: bool
) -> Custody:
    """Build the custody from settings. On local networks only, a missing master key is
    generated once into `data_dir/master.key` (mode 0600) so the demo needs no set-up."""
    if not master_key:
        if not allow_generated:
            raise CustodyError("ZPAY_MASTER_KEY is required on non-local networks")
        path = data_dir / "master.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(secrets.token_bytes(32)).decode())
        master_key = path.read_text().strip()
    keys = {version: _decode_key(master_key)}
    for item in filter(None, (p.strip() for p in previous.split(","))):
        ver, _, text = item.partition(":")
        if not ver.strip().isdigit():
            raise CustodyError("ZPAY_PREVIOUS_MASTER_KEYS must be version:base64 entries "
                               "separated by commas")
        if int(ver) == version:
            raise CustodyError(
                f"ZPAY_PREVIOUS_MASTER_KEYS has an entry for version {version}, which is "
                f"ZPAY_MASTER_KEY_VERSION: it would replace the current master key; remove "
                f"that entry, or give the new key a higher ZPAY_MASTER_KEY_VERSION")
        if int(ver) in keys:
            raise CustodyError(f"ZPAY_PREVIOUS_MASTER_KEYS names version {int(ver)} twice")
        keys[int(ver)] = _decode_key(text)
    return Custody(keys, version)
