"""Request bodies. Amounts are decimal strings; unknown fields are refused."""

from __future__ import annotations

from typing import Any

import msgspec


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentCreate(Body):
    name: str


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
