"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A delivery carries three headers:

- ``webhook-id``: the message id; stays the same across retries, so the
  receiver can de-duplicate (delivery is at-least-once).
- ``webhook-timestamp``: Unix seconds when this attempt was signed.
- ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries of
  ``f"{id}.{timestamp}.{body}"`` keyed by the base64 bytes after ``whsec_``.

Several entries let a merchant rotate secrets without dropping deliveries:
zpay signs with every active secret and the receiver accepts any match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Final, Literal

SECRET_PREFIX: Final = "whsec_"
SIGNATURE_VERSION: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300
SECRET_BYTES: Final = 32

HEADER_ID: Final = "webhook-id"
HEADER_TIMESTAMP: Final = "webhook-timestamp"
HEADER_SIGNATURE: Final = "webhook-signature"

VerificationErrorCode = Literal[
    "missing_headers", "timestamp_out_of_tolerance", "invalid_signature"
]


class WebhookVerificationError(Exception):
    """The payload can't be trusted; ``code`` is stable, the message is for humans.

    Codes: ``missing_headers`` (a required header is absent or malformed),
    ``timestamp_out_of_tolerance`` (replay window exceeded, either direction),
    ``invalid_signature`` (no ``v1`` entry matches).
    """

    def __init__(self, code: VerificationErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: VerificationErrorCode = code


def generate_secret() -> str:
    """A fresh ``whsec_`` secret with 256 bits of entropy."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        # Never echo the secret: this message may reach logs.
        raise ValueError("webhook secret is not valid base64 after the whsec_ prefix") from None


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature entry for one secret."""
    return f"{SIGNATURE_VERSION},{_signature(_secret_key(secret), msg_id, timestamp, body)}"


def build_headers(
    secrets_: str | Iterable[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with each given secret (rotation)."""
    secret_list = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    if not secret_list:
        raise ValueError("at least one webhook secret is required")
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(sign(s, msg_id, timestamp, body) for s in secret_list),
    }


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    now: int | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise :class:`WebhookVerificationError` unless ``payload`` was signed with ``secret``.

    Pass the raw request body exactly as received: re-serialised JSON changes
    the bytes and fails verification.
    """
    # HTTP header names are case-insensitive; frameworks disagree on casing.
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    timestamp_text = lowered.get(HEADER_TIMESTAMP)
    signature_header = lowered.get(HEADER_SIGNATURE)
    if not msg_id or not timestamp_text or not signature_header:
        raise WebhookVerificationError(
            "missing_headers",
            f"required headers: {HEADER_ID}, {HEADER_TIMESTAMP}, {HEADER_SIGNATURE}",
        )
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError(
            "missing_headers", f"{HEADER_TIMESTAMP} is not an integer"
        ) from None

    current = int(time.time()) if now is None else now
    # Refusing future timestamps too stops a captured request signed "ahead"
    # from being replayable for longer than the window.
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            "timestamp_out_of_tolerance",
            f"{HEADER_TIMESTAMP} is more than {tolerance_s}s away from now",
        )

    body = payload.encode() if isinstance(payload, str) else payload
    expected = _signature(_secret_key(secret), msg_id, timestamp, body).encode("ascii")
    for entry in signature_header.split():
        version, _, candidate = entry.partition(",")
        # Constant-time: timing must not reveal how much of a forged MAC matched.
        if version == SIGNATURE_VERSION and hmac.compare_digest(
            expected, candidate.encode("utf-8", "replace")
        ):
            return
    raise WebhookVerificationError("invalid_signature", "no matching v1 signature")
