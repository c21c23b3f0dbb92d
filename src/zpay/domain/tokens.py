"""Bearer tokens: random, prefixed by kind and environment, with a checksum.

Format (as GitHub's): `<kind>_<env>_<30 base62 random><6 base62 CRC32 of the random part>`.
A scanner can find leaked tokens by prefix, and a malformed token is refused before any
database lookup. Only a SHA-256 hash is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 30
_CHECK_LEN = 6
KINDS = ("sk", "agent", "as")
ENVIRONMENTS = ("test", "live")


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate(kind: str, environment: str) -> str:
    assert kind in KINDS and environment in ENVIRONMENTS
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return f"{kind}_{environment}_{body}{_checksum(body)}"


def parse_kind(token: str) -> str | None:
    """The token's kind if it is well-formed (prefix, length, alphabet, checksum), else None."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] not in KINDS or parts[1] not in ENVIRONMENTS:
        return None
    tail = parts[2]
    if len(tail) != _RANDOM_LEN + _CHECK_LEN or any(c not in _ALPHABET for c in tail):
        return None
    body, check = tail[:_RANDOM_LEN], tail[_RANDOM_LEN:]
    if not hmac.compare_digest(_checksum(body), check):
        return None
    return parts[0]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hint(token: str) -> str:
    """What may be shown later: the prefix and the last four characters."""
    return token[: token.rindex("_") + 1] + "…" + token[-4:]
