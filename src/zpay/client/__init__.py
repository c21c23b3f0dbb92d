"""The merchant SDK (sync and async) and a wallet helper for scripts and tests.

    from zpay.client import Zpay, PaymentRefused

    with Zpay("sk_test_…", base_url="http://127.0.0.1:8000") as zpay:
        agent = zpay.agents.create("shopper")
        key = zpay.session_keys.create(agent.id, user_wallet, "50", expires_in_seconds=3600)
        …  # the user signs key.approval in their wallet → zpay.session_keys.submit_approval
        try:
            zpay.with_token(agent.token).payments.create(key.id, "12.50", merchant_wallet)
        except PaymentRefused as refused:
            print(refused.code)  # e.g. "daily_limit"

`AsyncZpay` has the same resources and methods, awaited (lists: `async for`).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zpay.client._core import UNSET
    from zpay.client.aio import AsyncPager, AsyncZpay
    from zpay.client.errors import (
        APIConnectionError,
        AuthenticationError,
        Conflict,
        InvalidRequest,
        NotFound,
        PaymentFailed,
        PaymentRefused,
        PermissionDenied,
        ServerError,
        ServiceUnavailable,
        WaitTimeout,
        ZpayError,
    )
    from zpay.client.sync import Pager, Zpay
    from zpay.client.types import (
        Affordability,
        Agent,
        ApiKey,
        Approval,
        Event,
        FaucetDrip,
        ListPage,
        Payment,
        PaymentAttempt,
        PolicySession,
        SessionKey,
        WebhookAttempt,
        WebhookDelivery,
        WebhookEndpoint,
    )
    from zpay.client.wallet import ApprovalSigner, EvmWallet, SolanaWallet, WalletError, load_wallet

# Loaded on first use: `zpay` CLI commands start in a fraction of a second when they
# need neither the async client (asyncio) nor a wallet (solders, eth_account).
_HOMES = {
    "UNSET": "_core", "AsyncPager": "aio", "AsyncZpay": "aio", "Pager": "sync", "Zpay": "sync",
    "ApprovalSigner": "wallet", "EvmWallet": "wallet", "SolanaWallet": "wallet",
    "WalletError": "wallet", "load_wallet": "wallet",
    **dict.fromkeys(("APIConnectionError", "AuthenticationError", "Conflict", "InvalidRequest",
                     "NotFound", "PaymentFailed", "PaymentRefused", "PermissionDenied",
                     "ServerError",
                     "ServiceUnavailable", "WaitTimeout", "ZpayError"), "errors"),
    **dict.fromkeys(("Affordability", "Agent", "ApiKey", "Approval", "Event", "FaucetDrip",
                     "ListPage",
                     "Payment", "PaymentAttempt", "PolicySession", "SessionKey",
                     "WebhookAttempt", "WebhookDelivery", "WebhookEndpoint"), "types"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'zpay.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"zpay.client.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "UNSET",
    "APIConnectionError",
    "Affordability",
    "Agent",
    "ApiKey",
    "Approval",
    "ApprovalSigner",
    "AsyncPager",
    "AsyncZpay",
    "AuthenticationError",
    "Conflict",
    "Event",
    "EvmWallet",
    "FaucetDrip",
    "InvalidRequest",
    "ListPage",
    "NotFound",
    "Pager",
    "Payment",
    "PaymentAttempt",
    "PaymentFailed",
    "PaymentRefused",
    "PermissionDenied",
    "PolicySession",
    "ServerError",
    "ServiceUnavailable",
    "SessionKey",
    "SolanaWallet",
    "WaitTimeout",
    "WalletError",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Zpay",
    "ZpayError",
    "load_wallet",
]
