"""Recipients that can never be right, refused before anything is held or signed.

A payment to the session wallet itself would book money as spent that never left; one to
its token account, the mint, a program, zpay's fee payer or relayer, the token contract or
the zero address is lost or lands in zpay's own plumbing. Each chain adapter names these
(`reserved_recipients`); this module only asks and refuses.
"""

from __future__ import annotations

from collections.abc import Iterable

from zpay.chains.protocol import ChainAdapter, InvalidAddress, TokenInfo
from zpay.domain.errors import InvalidRequest

MAX_ALLOWED_RECIPIENTS = 100


class InvalidRecipient(InvalidRequest):
    code = "invalid_recipient"


def check_recipient(adapter: ChainAdapter, *, session_wallet: str, token: TokenInfo,
                    recipient: str) -> None:
    """Raise `invalid_recipient` (422) when `recipient` (canonical, as `validate_address`
    returns it) is the session wallet or one of its chain's reserved addresses."""
    if recipient in adapter.reserved_recipients(session_wallet, token):
        raise InvalidRecipient(
            "this recipient can never receive a payment from this session key (it is the "
            "session wallet itself, its token account, the token, or the chain's or zpay's "
            "own account)")


def validate_allowed_recipients(adapters: Iterable[ChainAdapter],
                                recipients: list[str]) -> list[str]:
    """Each `allowed_recipients` entry must be an address on at least one of `adapters`
    (the session's chains); it is stored canonical (as payments compare it)."""
    adapters = list(adapters)
    if len(recipients) > MAX_ALLOWED_RECIPIENTS:
        raise InvalidRecipient(f"at most {MAX_ALLOWED_RECIPIENTS} allowed_recipients")
    canonical = []
    for recipient in recipients:
        for adapter in adapters:
            try:
                canonical.append(adapter.validate_address(recipient))
                break
            except InvalidAddress:
                continue
        else:
            raise InvalidRecipient(
                f"allowed_recipients entry {recipient!r} is not an address on "
                f"{', '.join(a.network.name for a in adapters)}", recipient=recipient)
    return canonical
