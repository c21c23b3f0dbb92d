"""Approval links: an unguessable, signed, expiring URL that grants ONE thing — viewing and
submitting one approval (a funding or a top-up) of one session key.

    {ZPAY_PUBLIC_URL}/approve/<body>.<tag>

`body` is base64url of `key_id.approval_id.expires_unix_s`; `tag` is HMAC-SHA256 over a
purpose label and the body. The HMAC key is derived with HKDF from the custody master key
(`Custody.derived_keys("approval-links")`): nothing new to configure or to share between
replicas, and rotating the master key voids outstanding links (the ones signed with a
previous key still configured in `ZPAY_PREVIOUS_MASTER_KEYS` keep working). Links are
stateless: a fresh one can be minted at any time (`GET /v1/session-keys/{id}` answers one
while the key awaits its approval), and none can be widened: changing any byte of it
breaks the tag. A link lives `ZPAY_APPROVAL_LINK_TTL_S` (24 h by default), never past the
key's own expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from zpay.domain.errors import NotFound, ZpayError
from zpay.services.context import AppContext
from zpay.store.models import Approval, SessionKey

PURPOSE = "approval-links"
_LABEL = b"zpay approval link v1\x00"


class LinkInvalid(NotFound):
    """Malformed or tampered: answered like an unknown page, revealing nothing."""

    code = "approval_link_invalid"


class LinkExpired(ZpayError):
    """Genuine but past its expiry. The ids inside are trustworthy (the tag checked), so
    the page can still say whose approval it was."""

    code = "approval_link_expired"

    def __init__(self, grant: LinkGrant) -> None:
        super().__init__("this approval link has expired; ask for a fresh one")
        self.grant = grant


@dataclass(frozen=True)
class LinkGrant:
    """What a valid link grants: this approval of this key, until `expires_at`."""

    key_id: str
    approval_id: str
    expires_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:  # one spelling per value: no two links grant the same thing
        raise ValueError("not canonical base64url")
    return raw


def _tag(key: bytes, body: str) -> bytes:
    return hmac.new(key, _LABEL + body.encode(), hashlib.sha256).digest()


def mint(ctx: AppContext, key_id: str, approval_id: str, expires_at: datetime) -> str:
    body = _b64(f"{key_id}.{approval_id}.{int(expires_at.timestamp())}".encode())
    return f"{body}.{_b64(_tag(ctx.custody.derived_keys(PURPOSE)[0], body))}"


def verify(ctx: AppContext, token: str) -> LinkGrant:
    """The grant of a genuine, unexpired link; LinkInvalid or LinkExpired otherwise."""
    body, _, tag_text = token.partition(".")
    try:
        tag = _unb64(tag_text)
        genuine = any(
            hmac.compare_digest(tag, _tag(k, body)) for k in ctx.custody.derived_keys(PURPOSE)
        )
        if not genuine:
            raise ValueError("not signed by this deployment")
        key_id, approval_id, expiry = _unb64(body).decode("ascii").split(".")
        grant = LinkGrant(key_id, approval_id, datetime.fromtimestamp(int(expiry), UTC))
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise LinkInvalid("no such approval link") from None
    if ctx.now() >= grant.expires_at:
        raise LinkExpired(grant)
    return grant


def url_for(ctx: AppContext, key: SessionKey, approval: Approval) -> str:
    ttl = timedelta(seconds=ctx.settings.approval_link_ttl_s)
    expires_at = min(key.expires_at, ctx.now() + ttl)
    return f"{ctx.settings.base_url}/approve/{mint(ctx, key.id, approval.id, expires_at)}"


def with_url(
    ctx: AppContext, body: dict[str, Any], key: SessionKey, approval: Approval
) -> dict[str, Any]:
    """An API answer carrying an approval, with the link a user can open to sign it: at the
    top level and, where the answer nests the approval, inside it too."""
    url = url_for(ctx, key, approval)
    if isinstance(body.get("approval"), dict):
        body["approval"]["approval_url"] = url
    body["approval_url"] = url
    return body
