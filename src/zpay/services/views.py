"""JSON representations of the resources. Amounts leave as decimal strings; never secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from zpay.domain.money import format_amount
from zpay.store.models import (
    Agent,
    Approval,
    Event,
    Payment,
    PaymentAttempt,
    PolicySession,
    SessionKey,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


def ts(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def amount(value: int | None, decimals: int) -> str | None:
    return None if value is None else format_amount(value, decimals=decimals)


def agent_view(agent: Agent) -> dict[str, Any]:
    return {"id": agent.id, "object": "agent", "name": agent.name, "status": agent.status,
            "token_hint": agent.token_hint, "token_expires_at": ts(agent.token_expires_at),
            "created_at": ts(agent.created_at),
            "updated_at": ts(agent.updated_at)}


def approval_view(approval: Approval) -> dict[str, Any]:
    return {"id": approval.id, "object": "approval", "kind": approval.kind,
            "status": approval.status, "method": approval.method,
            "expires_at": ts(approval.expires_at), "tx_id": approval.tx_id, **approval.public}


def session_key_view(key: SessionKey, approval: Approval | None = None) -> dict[str, Any]:
    d = key.decimals
    body: dict[str, Any] = {
        "id": key.id, "object": "session_key", "status": key.status, "chain": key.chain,
        "token": key.token_symbol, "token_address": key.token_address, "decimals": d,
        "agent_id": key.agent_id, "user_wallet": key.user_wallet,
        "session_key_address": key.address,
        "max_amount": amount(key.max_amount, d),
        "funded_amount": amount(key.funded_amount, d),
        "spent_amount": amount(key.spent_amount, d),
        "held_amount": amount(key.held_amount, d),
        # What is really left to spend: refunds have left the wallet too.
        "remaining_amount": amount(key.funded_amount - key.spent_amount - key.held_amount
                                   - key.refunded_amount, d),
        "refunded_amount": amount(key.refunded_amount, d),
        "transaction_count": key.transaction_count,
        "linked_session_id": key.policy_session_id,
        "refund_on_close": key.refund_on_close,
        "refund_status": key.refund_status,
        "expires_at": ts(key.expires_at), "created_at": ts(key.created_at),
        "security": {"last_activity": ts(key.last_activity_at), "revoked_at": ts(key.revoked_at),
                     "custody": "aes-256-gcm envelope, per-wallet data key"},
    }
    if approval is not None:
        body["approval"] = approval_view(approval)
        # The wallet-facing fields also at top level, where merchants look for them.
        body.update({k: v for k, v in approval.public.items() if k != "format"})
    return body


def payment_view(p: Payment, decimals: int, token: str) -> dict[str, Any]:
    return {"id": p.id, "object": "payment", "status": p.status, "session_key_id": p.session_key_id,
            "agent_id": p.agent_id, "chain": p.chain, "token": token,
            "amount": amount(p.amount, decimals), "recipient": p.recipient,
            "description": p.description, "tx_id": p.tx_id, "failure_code": p.failure_code,
            "linked_session_id": p.policy_session_id,
            "created_at": ts(p.created_at), "updated_at": ts(p.updated_at)}


def attempt_view(a: PaymentAttempt, decimals: int) -> dict[str, Any]:
    return {"id": a.id, "object": "payment_attempt", "session_key_id": a.session_key_id,
            "agent_id": a.agent_id, "amount": amount(a.amount, decimals),
            "recipient": a.recipient, "allowed": a.allowed, "reason": a.reason,
            "payment_id": a.payment_id, "created_at": ts(a.created_at)}


def policy_session_view(s: PolicySession) -> dict[str, Any]:
    d = s.decimals
    return {
        "id": s.id, "object": "session", "status": s.status, "agent_id": s.agent_id,
        "user_wallet": s.user_wallet, "token": s.token_symbol,
        "max_per_transaction": amount(s.max_per_transaction, d),
        "max_per_day": amount(s.max_per_day, d), "max_per_week": amount(s.max_per_week, d),
        "max_per_month": amount(s.max_per_month, d), "max_total": amount(s.max_total, d),
        "allowed_recipients": s.allowed_recipients, "allowed_chains": s.allowed_chains,
        "allowed_methods": s.allowed_methods, "active_hours": s.active_hours,
        "window_mode": s.window_mode, "timezone": s.timezone,
        "total_committed": amount(s.total_committed, d),
        "expires_at": ts(s.expires_at), "created_at": ts(s.created_at),
        "revoked_at": ts(s.revoked_at),
    }


def event_view(e: Event) -> dict[str, Any]:
    return {"id": e.id, "object": "event", "type": e.type, "object_type": e.object_type,
            "object_id": e.object_id, "data": e.data, "created_at": ts(e.created_at)}


def endpoint_view(e: WebhookEndpoint) -> dict[str, Any]:
    return {"id": e.id, "object": "webhook_endpoint", "url": e.url, "description": e.description,
            "event_types": e.event_types, "enabled": e.enabled,
            "disabled_reason": e.disabled_reason, "created_at": ts(e.created_at),
            "updated_at": ts(e.updated_at)}


def delivery_view(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {"id": d.id, "object": "webhook_delivery", "endpoint_id": d.endpoint_id,
            "event_id": d.event_id, "status": d.status, "attempt_count": d.attempt_count,
            "next_attempt_at": ts(d.next_attempt_at), "last_status_code": d.last_status_code,
            "attempts": [{"attempt": a.attempt_number, "status_code": a.status_code,
                          "latency_ms": a.latency_ms, "error": a.error, "at": ts(a.created_at)}
                         for a in attempts],
            "created_at": ts(d.created_at)}
