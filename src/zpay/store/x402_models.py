"""What zpay signed for an x402 `exact` payment, beside its `payments` row (same id).

The payment row carries the hold and the status (like any payment: windows, limits and
the ledger see it); its `chain_transfers` row (kind `x402`) is how zpay follows the
authorization on chain. This row keeps the x402 side: the entry paid as received, the
header value handed to the agent (returned again on an Idempotency-Key replay; a signed
authorization that can only pay `pay_to`, never logged), and what the agent reported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from zpay.store.models import Base


class X402Payment(Base):
    __tablename__ = "x402_payments"
    id: Mapped[str] = mapped_column(ForeignKey("payments.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    session_key_id: Mapped[str] = mapped_column(ForeignKey("session_keys.id"), index=True)
    x402_version: Mapped[int] = mapped_column(Integer)
    network: Mapped[str] = mapped_column(String(100))  # as the server named it
    asset: Mapped[str] = mapped_column(String(100))
    pay_to: Mapped[str] = mapped_column(String(100))
    resource_url: Mapped[str | None] = mapped_column(String(2000))
    requirement: Mapped[dict[str, Any]]  # the `accepts` entry paid, exactly as received
    header_name: Mapped[str] = mapped_column(String(40))  # PAYMENT-SIGNATURE | X-PAYMENT
    header_value: Mapped[str] = mapped_column(Text)
    reported_tx: Mapped[str | None] = mapped_column(String(200))  # PAYMENT-RESPONSE claim
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
