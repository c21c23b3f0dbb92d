"""Webhook delivery: signing, URL safety, sending and the retry schedule.

Merchants verify deliveries with ``zpay.webhooks.verify(payload, headers, secret)``.
Only signing is imported here, so that call doesn't load the HTTP stack; the
server side imports ``zpay.webhooks.ssrf``, ``.pinning``, ``.sender`` and ``.retry``
directly.
"""

from zpay.webhooks.signing import (
    WebhookVerificationError,
    build_headers,
    generate_secret,
    sign,
    verify,
)

__all__ = [
    "WebhookVerificationError",
    "build_headers",
    "generate_secret",
    "sign",
    "verify",
]
