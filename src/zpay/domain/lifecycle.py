"""Session-key and policy-session state machines (DESIGN.md, "Lifecycle of a session key")."""

from __future__ import annotations

import enum

from zpay.domain.errors import Conflict


class KeyStatus(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    REVOKED = "revoked"


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class PaymentStatus(enum.StrEnum):
    AUTHORIZED = "authorized"  # hold written, not yet on chain
    SUBMITTED = "submitted"  # signed transfer recorded and sent
    SUCCEEDED = "succeeded"  # captured
    FAILED = "failed"  # released


HOLDING = (PaymentStatus.AUTHORIZED, PaymentStatus.SUBMITTED)
COUNTED = (*HOLDING, PaymentStatus.SUCCEEDED)

_LIVE = {KeyStatus.PENDING_APPROVAL, KeyStatus.ACTIVE, KeyStatus.EXHAUSTED}

_TRANSITIONS: dict[KeyStatus, set[KeyStatus]] = {
    KeyStatus.PENDING_APPROVAL: {KeyStatus.ACTIVE, KeyStatus.EXPIRED, KeyStatus.REVOKED},
    KeyStatus.ACTIVE: {KeyStatus.EXHAUSTED, KeyStatus.EXPIRED, KeyStatus.REVOKED},
    KeyStatus.EXHAUSTED: {KeyStatus.ACTIVE, KeyStatus.EXPIRED, KeyStatus.REVOKED},
    KeyStatus.EXPIRED: set(),
    KeyStatus.REVOKED: set(),
}


def transition(current: KeyStatus, target: KeyStatus) -> KeyStatus:
    if target not in _TRANSITIONS[current]:
        raise Conflict(
            f"a session key cannot go from {current} to {target}", code="invalid_state_transition"
        )
    return target


def is_live(status: KeyStatus) -> bool:
    return status in _LIVE


def balance_status(funded: int, spent: int, held: int) -> KeyStatus:
    """ACTIVE while anything can still be spent or is held; EXHAUSTED once spent == funded."""
    return KeyStatus.EXHAUSTED if funded - spent == 0 and held == 0 else KeyStatus.ACTIVE
