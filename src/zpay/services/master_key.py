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


@dataclass(frozen=True)
class _SealedColumns:
    """Where a table keeps sealed secrets: the row id the secret is bound to, and the
    columns of its `SealedSecret` (version, wrapped data key, ciphertext)."""

    name: str
    model: Any
    id: str
    version: str
    wrapped: str
    ciphertext: str


_TABLES = (
    _SealedColumns("wallet_secrets", WalletSecret, "session_key_id", "key_version",
                   "wrapped_data_key", "ciphertext"),
    _SealedColumns("webhook_endpoints", WebhookEndpoint, "id", "secret_key_version",
                   "secret_wrapped_key", "secret_ciphertext"),
)


@dataclass
class RotationReport:
    version: int
    rewrapped: dict[str, int] = field(default_factory=lambda: {t.name: 0 for t in _TABLES})
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
        for column in (getattr(t.model, t.version) for t in _TABLES):
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


async def _rewrap_batch(ctx: AppContext, table: _SealedColumns, batch: int) -> int:
    current = ctx.custody.current_version
    model = table.model
    async with ctx.db.transaction() as s:
        rows = (await s.execute(
            select(model).where(getattr(model, table.version) != current)
            .order_by(getattr(model, table.id)).limit(batch)
            .with_for_update(skip_locked=True))).scalars().all()
        for row in rows:
            sealed = ctx.custody.rewrap(getattr(row, table.id), SealedSecret(
                getattr(row, table.version), getattr(row, table.wrapped),
                getattr(row, table.ciphertext)))
            setattr(row, table.version, sealed.key_version)
            setattr(row, table.wrapped, sealed.wrapped_data_key)
    return len(rows)


async def rotate_master(ctx: AppContext, *, batch: int = DEFAULT_BATCH,
                        max_batches: int | None = None) -> RotationReport:
    """Re-wrap up to `max_batches` batches of `batch` rows (None: until none remain)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"the batch size must be between 1 and {MAX_BATCH}")
    report = RotationReport(version=ctx.custody.current_version)
    _check_versions(ctx, await remaining_by_version(ctx))
    for table in _TABLES:
        while max_batches is None or report.batches < max_batches:
            done = await _rewrap_batch(ctx, table, batch)
            if not done:
                break
            report.rewrapped[table.name] += done
            report.batches += 1
    report.remaining = await remaining_by_version(ctx)
    return report
