"""Request bodies. Amounts are decimal strings; unknown fields are refused."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from zpay.services import fields as f


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentCreate(Body):
    name: f.Name
    # the token stops working after this many seconds (60 s to a year); None: never
    expires_in_seconds: int | None = None


class AgentTokenRotate(Body):
    expires_in_seconds: int | None = None  # the new token's lifetime; None: no expiry


class ApiKeyCreate(Body):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None


class ApiKeyRoll(Body):
    # how long the old key keeps working (default a day, at most a week; 0: revoked now)
    overlap_seconds: Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600)] | None = None


class ApprovalSubmit(Body):
    """Solana: `signed_transaction` (base64). EVM: `signature` over the EIP-712 typed data
    (optionally with the `typed_data` the wallet signed), or a `signed_transaction` (0x hex)."""

    signed_transaction: f.SignedTransaction | None = None
    signature: f.Signature | None = None
    typed_data: dict[str, Any] | None = None

    def signed(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class TopUpCreate(Body):
    amount: f.Amount
    approval_method: f.Method | None = None


class LinkRequest(Body):
    session_id: f.Id


class FaucetRequest(Body):
    wallet: f.Address
    amount: f.Amount
    chain: f.ChainName | None = None
    token: f.Symbol = "USDC"


class WebhookEndpointCreate(Body):
    url: f.Url
    event_types: f.EventTypes | None = None
    description: f.Description | None = None
    enabled: bool = True


class WebhookEndpointUpdate(Body):
    url: f.Url | None = None
    event_types: f.EventTypes | None = None
    description: f.Description | None = None
    enabled: bool | None = None
