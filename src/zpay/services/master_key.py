"""Master key rotation: re-wrap every data key under the current master key version.

Operators set the new key as `ZPAY_MASTER_KEY` with a higher `ZPAY_MASTER_KEY_VERSION`,
move the old one to `ZPAY_PREVIOUS_MASTER_KEYS` (`version:base64`), restart, and run
`zpay keys rotate-master`. It re-wraps the data keys of session-wallet secrets
(`wallet_secrets`) and webhook signing secrets (`webhook_endpoints`) in batches, one
transaction each, rows locked (`SKIP LOCKED` on PostgreSQL, so it runs beside live
servers). Secrets themselves are never decrypted to disk nor re-encrypted: only the small
wrapped data key changes. Interrupted, it simply runs again: it picks the rows still under
an older version. When none remain, the previous keys can be removed from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from zpay.custody import CustodyError, SealedSecret
from zpay.services.context import AppContext
from zpay.store.models import WalletSecret, WebhookEndpoint

DEFAULT_BATCH = 100
MAX_BATCH = 10_000


@dataclass
class RotationReport:
    version: int
    rewrapped: dict[str, int] = field(default_factory=lambda: {"wallet_secrets": 0,
                                                               "webhook_endpoints": 0})
    batches: int = 0
    remaining: dict[int, int] = field(default_factory=dict)  # older version → rows left

    @property
    def done(self) -> bool:
        return not self.remaining


async def remaining_by_version(ctx: AppContext) -> dict[int, int]:
    """Rows still wrapped under another version than the current one, by version."""
    current = ctx.custody.current_version
    out: dict[int, int] = {}
    async with ctx.db.sessions() as s:
        for column in (WalletSecret.key_version, WebhookEndpoint.secret_key_version):
            rows = (await s.execute(select(column, func.count()).where(column != current)
                                    .group_by(column))).all()
            for version, count in rows:
                out[int(version)] = out.get(int(version), 0) + int(count)
    return out


def _check_versions(ctx: AppContext, remaining: dict[int, int]) -> None:
    missing = sorted(set(remaining) - ctx.custody.versions)
    if missing:
        raise CustodyError(
            f"{sum(remaining[v] for v in missing)} secrets are wrapped by master key "
            f"version(s) {', '.join(map(str, missing))}, which ZPAY_PREVIOUS_MASTER_KEYS "
            f"does not hold; add them as version:base64 and run again")


async def _wallet_batch(ctx: AppContext, batch: int) -> int:
    current = ctx.custody.current_version
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(WalletSecret).where(WalletSecret.key_version != current)
            .order_by(WalletSecret.session_key_id).limit(batch)
            .with_for_update(skip_locked=True))).scalars().all()
        for row in rows:
            sealed = ctx.custody.rewrap(row.session_key_id, SealedSecret(
                row.key_version, row.wrapped_data_key, row.ciphertext))
            row.key_version, row.wrapped_data_key = sealed.key_version, sealed.wrapped_data_key
    return len(rows)


async def _endpoint_batch(ctx: AppContext, batch: int) -> int:
    current = ctx.custody.current_version
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.secret_key_version != current)
            .order_by(WebhookEndpoint.id).limit(batch)
            .with_for_update(skip_locked=True))).scalars().all()
        for row in rows:
            sealed = ctx.custody.rewrap(row.id, SealedSecret(
                row.secret_key_version, row.secret_wrapped_key, row.secret_ciphertext))
            row.secret_key_version = sealed.key_version
            row.secret_wrapped_key = sealed.wrapped_data_key
    return len(rows)


async def rotate_master(ctx: AppContext, *, batch: int = DEFAULT_BATCH,
                        max_batches: int | None = None) -> RotationReport:
    """Re-wrap up to `max_batches` batches of `batch` rows (None: until none remain)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"the batch size must be between 1 and {MAX_BATCH}")
    report = RotationReport(version=ctx.custody.current_version)
    _check_versions(ctx, await remaining_by_version(ctx))
    steps: list[tuple[str, Any]] = [("wallet_secrets", _wallet_batch),
                                    ("webhook_endpoints", _endpoint_batch)]
    for name, step in steps:
        while max_batches is None or report.batches < max_batches:
            done = await step(ctx, batch)
            if not done:
                break
            report.rewrapped[name] += done
            report.batches += 1
    report.remaining = await remaining_by_version(ctx)
    return report
