"""Chain errors as zpay answers them: a stable code and a FIXED message.

What a node said (and the RPC URL inside transport errors: hosted RPC URLs carry their API
key in the path) goes to the log, redacted; responses and events carry only our words.
"""

from __future__ import annotations

import logging

from zpay.chains.protocol import ChainError
from zpay.chains.redaction import redact
from zpay.domain.errors import ZpayError

log = logging.getLogger(__name__)

MESSAGES = {
    "approval_mismatch": "the signed approval is not the one zpay issued for this key",
    "approval_signature_invalid": "the approval is not signed by the key's user wallet",
    "approval_expired": "the approval's validity lapsed before it landed; ask for a fresh one",
    "approval_rejected": "the chain refused the approval (does the user's wallet hold the "
                         "funds?); nothing moved",
    "transfer_failed": "the chain refused the transfer; nothing moved",
    "chain_unavailable": "the chain is unavailable right now; retry later",
    "confirmation_timeout": "sent, but not confirmed yet; the outcome follows from the chain",
    "invalid_address": "not a valid address on this chain",
    "flow_not_supported": "this operation is not supported on this chain or token",
    "unknown_token": "this token is not available on this chain",
}
def message_for(code: str) -> str:
    return MESSAGES.get(code, "the chain refused the operation")


def as_zpay_error(exc: ChainError, context: str) -> ZpayError:
    log.warning("%s: %s (%s)", context, redact(str(exc)), exc.code)
    return ZpayError(message_for(exc.code), code=exc.code)
