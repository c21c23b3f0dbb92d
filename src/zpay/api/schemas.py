"""Request bodies. Amounts are decimal strings; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentCreate(Body):
    name: str


class SessionCreate(Body):
    agent_id: str
    user_wallet: str | None = None
    token: str = "USDC"
    max_per_transaction: str | None = None
    max_per_day: str | None = None
    max_per_week: str | None = None
    max_per_month: str | None = None
    max_total: str | None = None
    allowed_recipients: list[str] | None = None
    allowed_chains: list[str] | None = None
    allowed_methods: list[str] | None = None
    active_hours: list[int] | None = None
    window_mode: str = "rolling"
    timezone: str = "UTC"
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None


class SessionKeyCreate(Body):
    agent_id: str
    user_wallet: str
    max_amount: str
    chain: str | None = None
    token: str = "USDC"
    expires_at: datetime | None = None
    expires_in_seconds: int | None = None
    session_id: str | None = None
    refund_on_close: bool = True
    approval_method: str | None = None


class ApprovalSubmit(Body):
    """Solana: `signed_transaction` (base64). EVM: `signature` over the EIP-712 typed data
    (optionally with the `typed_data` the wallet signed), or a `signed_transaction` (0x hex)."""

    signed_transaction: str | None = None
    signature: str | None = None
    typed_data: dict[str, Any] | None = None

    def signed(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class TopUpCreate(Body):
    amount: str
    approval_method: str | None = None


class LinkRequest(Body):
    session_id: str


class PaymentCreate(Body):
    session_key_id: str
    amount: str
    recipient: str
    description: str | None = None


class FaucetRequest(Body):
    wallet: str
    amount: str
    chain: str | None = None
    token: str = "USDC"


class WebhookEndpointCreate(Body):
    url: str
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool = True


class WebhookEndpointUpdate(Body):
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
