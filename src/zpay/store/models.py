"""SQLAlchemy models. Every row belongs to one merchant; money columns are BaseUnits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from zpay.store.types import BaseUnits, UtcDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON()}


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(40))
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # set when rolled: the old key's overlap ends here


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # active | frozen | deleted
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_hint: Mapped[str] = mapped_column(String(40))
    token_expires_at: Mapped[datetime | None]  # None: the token lives until rotated
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PolicySession(Base):
    __tablename__ = "policy_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    user_wallet: Mapped[str | None] = mapped_column(String(100))
    token_symbol: Mapped[str] = mapped_column(String(16))
    decimals: Mapped[int] = mapped_column(Integer)
    max_per_transaction: Mapped[int | None] = mapped_column(BaseUnits())
    max_per_day: Mapped[int | None] = mapped_column(BaseUnits())
    max_per_week: Mapped[int | None] = mapped_column(BaseUnits())
    max_per_month: Mapped[int | None] = mapped_column(BaseUnits())
    max_total: Mapped[int | None] = mapped_column(BaseUnits())
    allowed_recipients: Mapped[list[str] | None] = mapped_column(JSON)
    allowed_chains: Mapped[list[str] | None] = mapped_column(JSON)
    allowed_methods: Mapped[list[str] | None] = mapped_column(JSON)
    active_hours: Mapped[list[int] | None] = mapped_column(JSON)
    window_mode: Mapped[str] = mapped_column(String(16))
    timezone: Mapped[str] = mapped_column(String(64))
    total_committed: Mapped[int] = mapped_column(BaseUnits())  # held + captured, all time
    # The day/week/month windows as running totals (services.windows): `*_used` is what
    # the counted payments created at or after `*_since` add up to, kept under this row's
    # lock; the part of the history that has left a window is subtracted as it leaves.
    day_since: Mapped[datetime]
    day_used: Mapped[int] = mapped_column(BaseUnits())
    week_since: Mapped[datetime]
    week_used: Mapped[int] = mapped_column(BaseUnits())
    month_since: Mapped[datetime]
    month_used: Mapped[int] = mapped_column(BaseUnits())
    status: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SessionKey(Base):
    __tablename__ = "session_keys"
    # The ledger's invariant (zpay.domain.ledger), kept by the database too.
    __table_args__ = (
        CheckConstraint(
            "spent_amount + held_amount + refunded_amount <= funded_amount + 0",
            name="ledger_balanced",
        ),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    chain: Mapped[str] = mapped_column(String(40))
    token_symbol: Mapped[str] = mapped_column(String(16))
    token_address: Mapped[str] = mapped_column(String(100))
    decimals: Mapped[int] = mapped_column(Integer)
    user_wallet: Mapped[str] = mapped_column(String(100), index=True)  # a user's keys
    address: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    max_amount: Mapped[int] = mapped_column(BaseUnits())  # the first approval's amount
    funded_amount: Mapped[int] = mapped_column(BaseUnits())
    spent_amount: Mapped[int] = mapped_column(BaseUnits())
    held_amount: Mapped[int] = mapped_column(BaseUnits())
    refunded_amount: Mapped[int] = mapped_column(BaseUnits())
    transaction_count: Mapped[int] = mapped_column(Integer)
    policy_session_id: Mapped[str | None] = mapped_column(
        ForeignKey("policy_sessions.id"), index=True
    )
    refund_on_close: Mapped[bool] = mapped_column(Boolean)
    refund_status: Mapped[str | None] = mapped_column(String(16))  # pending | done | skipped
    refund_tx_id: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_activity_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class WalletSecret(Base):
    __tablename__ = "wallet_secrets"
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), primary_key=True)
    key_version: Mapped[int] = mapped_column(Integer)
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class Approval(Base):
    __tablename__ = "approvals"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # funding | top_up
    amount: Mapped[int] = mapped_column(BaseUnits())
    method: Mapped[str | None] = mapped_column(String(24))
    # Every renewal of one funding shares it (the first approval's id): it seeds the
    # chain-level identity (EIP-3009 nonce), so at most one version can ever fund.
    funding_id: Mapped[str] = mapped_column(String(40))
    # pending -> submitting -> confirmed | pending (refused, may retry) | superseded | expired
    status: Mapped[str] = mapped_column(String(16))
    public: Mapped[dict[str, Any]] = mapped_column(JSON)
    private: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None]
    tx_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        Index("ix_payments_policy_time", "policy_session_id", "created_at"),
        Index("ix_payments_status_updated", "status", "updated_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), index=True)
    agent_id: Mapped[str | None] = mapped_column(String(40))
    policy_session_id: Mapped[str | None] = mapped_column(String(40))
    chain: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BaseUnits())
    recipient: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    tx_reference: Mapped[str | None] = mapped_column(String(200))  # its ChainTransfer
    tx_id: Mapped[str | None] = mapped_column(String(200))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("merchant_id", "principal", "key",
                                       name="uq_idempotency_principal_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    # Whose key it is (services.auth.Principal.scope): an agent, a session token or the
    # merchant itself — one principal never sees nor spoils another's keys.
    principal: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # completed (written with its outcome)
    # Bound in the SAME transaction as the payment's hold: a retry answers that payment as
    # it stands. A refusal stores its response instead.
    payment_id: Mapped[str | None] = mapped_column(String(40))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ChainTransfer(Base):
    """A transfer zpay had signed (approval, payment, refund), written BEFORE it is sent:
    with its reference, the signed bytes and its validity in chain terms, any process can
    re-send it and decide its outcome from the chain alone after a crash."""

    __tablename__ = "chain_transfers"
    __table_args__ = (Index("ix_chain_transfers_status_updated", "status", "updated_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # approval | payment | refund | x402
    subject_id: Mapped[str] = mapped_column(String(40), index=True)  # approval/payment/key id
    chain: Mapped[str] = mapped_column(String(40))
    reference: Mapped[str] = mapped_column(String(200), unique=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    amount: Mapped[int] = mapped_column(BaseUnits())
    # EVM validBefore (unix s, judged by block timestamps); Solana last valid block height.
    valid_until: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending | confirmed | failed
    tx_id: Mapped[str | None] = mapped_column(String(200))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PaymentAttempt(Base):
    """Append-only audit log of every authorization, allowed or refused."""

    __tablename__ = "payment_attempts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    session_key_id: Mapped[str] = mapped_column(String(40), index=True)
    agent_id: Mapped[str | None] = mapped_column(String(40))
    amount: Mapped[int | None] = mapped_column(BaseUnits())
    recipient: Mapped[str | None] = mapped_column(String(100))
    allowed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(64))
    payment_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]


class Event(Base):
    """Transactional outbox: written in the same transaction as the state change."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_merchant_id_id", "merchant_id", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    type: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(40), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    dispatched: Mapped[bool] = mapped_column(Boolean, index=True)  # fanned out to deliveries
    created_at: Mapped[datetime]


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    secret_key_version: Mapped[int] = mapped_column(Integer)
    secret_wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_delivery_endpoint_event"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"))
    status: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempt_count: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt."""

    __tablename__ = "webhook_attempts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempt_number: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]


class ChainInstance(Base):
    """Pairs a database with the identity of a local chain's persisted state."""

    __tablename__ = "chain_instances"
    network: Mapped[str] = mapped_column(String(40), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
