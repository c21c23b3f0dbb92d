"""One typed settings object, built once from `ZPAY_*` environment variables and passed down."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _at_least_one(name: str, value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"ZPAY_{name}: must be at least 1")
    return number


_FRAME_SOURCE = re.compile(r"'none'|'self'|https?://[A-Za-z0-9.*-]+(:[0-9]+)?|[A-Za-z0-9.*-]+")


def frame_ancestors(value: str) -> tuple[str, ...]:
    """`ZPAY_FRAME_ANCESTORS`: the origins allowed to embed the approval page, separated by
    spaces or commas ("'none'" by default; "'self'", "https://shop.example", …). Each is
    checked, since it goes into a response header."""
    sources = tuple(s for s in re.split(r"[\s,]+", value.strip()) if s)
    for source in sources:
        if not _FRAME_SOURCE.fullmatch(source):
            raise ValueError(f"ZPAY_FRAME_ANCESTORS: {source!r} is not a CSP source")
    if not sources or ("'none'" in sources and len(sources) > 1):
        raise ValueError("ZPAY_FRAME_ANCESTORS: give 'none' alone, or one or more sources")
    return sources


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///./.zpay/zpay.db"
    data_dir: Path = Path("./.zpay")
    # base64 of 32 bytes; empty on a local network = a key file is created in data_dir
    master_key: str = field(default="", repr=False)
    master_key_version: int = 1
    # "version:base64,version:base64" — older master keys still able to unwrap data keys
    previous_master_keys: str = field(default="", repr=False)
    default_chain: str = "solana-local"
    chains: tuple[str, ...] = ("solana-local",)
    host: str = "127.0.0.1"
    port: int = 8000
    # Where users reach this deployment (approval links); empty: http://{host}:{port}
    public_url: str = ""
    frame_ancestors: tuple[str, ...] = ("'none'",)  # who may embed the approval page
    approval_link_ttl_s: int = 24 * 3600  # an approval link's life (never past the key's)
    scheduler_enabled: bool = True
    scheduler_interval_s: float = 1.0
    audit_interval_s: float = 60.0  # the audit reads balances from the chain: not every tick
    webhooks_allow_private: bool = False
    webhook_timeout_s: float = 10.0
    mcp_allow_private_urls: bool = False  # /mcp pay_x402 may fetch loopback/private URLs
    confirm_timeout_s: float = 30.0
    solana_commitment: str = "confirmed"
    solana_fee_payer_key: str = field(default="", repr=False)  # base58 64-byte keypair
    evm_relayer_key: str = field(default="", repr=False)  # 0x hex
    idempotency_ttl_s: int = 24 * 3600
    log_level: str = "INFO"
    db_pool_size: int = 20
    # Coalesced payment transactions running at once in a process (see services/payments).
    hot_path_transactions: int = 1
    dashboard_session_ttl_s: int = 8 * 3600  # a dashboard sign-in lasts this long
    log_format: str = "text"  # text | json (one JSON object per line)
    # Rate limits (fixed windows). Store: memory (one process), database (shared by every
    # replica: a counter row per window), auto (database on PostgreSQL, memory on SQLite).
    rate_limit_enabled: bool = True
    rate_limit_store: str = "auto"
    rate_limit_window_s: int = 60
    rate_limit_per_token: int = 1200  # requests per window per bearer token
    rate_limit_per_address: int = 2400  # requests per window per client address
    # refused payment attempts (4xx to POST /v1/payments) per token, in their own window
    rate_limit_refusals: int = 30
    rate_limit_refusals_window_s: int = 600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(f"ZPAY_{name}", default)

        data_dir = Path(get("DATA_DIR", "./.zpay"))
        chains = tuple(c.strip() for c in get("CHAINS", "solana-local").split(",") if c.strip())
        return cls(
            database_url=get("DATABASE_URL", f"sqlite+aiosqlite:///{data_dir / 'zpay.db'}"),
            data_dir=data_dir,
            master_key=get("MASTER_KEY", ""),
            master_key_version=int(get("MASTER_KEY_VERSION", "1")),
            previous_master_keys=get("PREVIOUS_MASTER_KEYS", ""),
            default_chain=get("DEFAULT_CHAIN", chains[0] if chains else "solana-local"),
            chains=chains,
            host=get("HOST", "127.0.0.1"),
            port=int(get("PORT", "8000")),
            public_url=get("PUBLIC_URL", ""),
            frame_ancestors=frame_ancestors(get("FRAME_ANCESTORS", "'none'")),
            approval_link_ttl_s=int(get("APPROVAL_LINK_TTL_S", str(24 * 3600))),
            scheduler_enabled=_bool(get("SCHEDULER", "1")),
            scheduler_interval_s=float(get("SCHEDULER_INTERVAL_S", "1.0")),
            audit_interval_s=float(get("AUDIT_INTERVAL_S", "60")),
            webhooks_allow_private=_bool(get("WEBHOOKS_ALLOW_PRIVATE", "0")),
            webhook_timeout_s=float(get("WEBHOOK_TIMEOUT_S", "10")),
            mcp_allow_private_urls=_bool(get("MCP_ALLOW_PRIVATE_URLS", "0")),
            confirm_timeout_s=float(get("CONFIRM_TIMEOUT_S", "30")),
            solana_commitment=get("SOLANA_COMMITMENT", "confirmed"),
            solana_fee_payer_key=get("SOLANA_FEE_PAYER_KEY", ""),
            evm_relayer_key=get("EVM_RELAYER_KEY", ""),
            idempotency_ttl_s=int(get("IDEMPOTENCY_TTL_S", str(24 * 3600))),
            log_level=get("LOG_LEVEL", "INFO"),
            db_pool_size=int(get("DB_POOL_SIZE", "20")),
            hot_path_transactions=_at_least_one("HOT_PATH_TRANSACTIONS",
                                                get("HOT_PATH_TRANSACTIONS", "1")),
            dashboard_session_ttl_s=int(get("DASHBOARD_SESSION_TTL_S", str(8 * 3600))),
            log_format=get("LOG_FORMAT", "text").strip().lower(),
            rate_limit_enabled=_bool(get("RATE_LIMIT_ENABLED", "1")),
            rate_limit_store=get("RATE_LIMIT_STORE", "auto").strip().lower(),
            rate_limit_window_s=int(get("RATE_LIMIT_WINDOW_S", "60")),
            rate_limit_per_token=int(get("RATE_LIMIT_PER_TOKEN", "1200")),
            rate_limit_per_address=int(get("RATE_LIMIT_PER_ADDRESS", "2400")),
            rate_limit_refusals=int(get("RATE_LIMIT_REFUSALS", "30")),
            rate_limit_refusals_window_s=int(get("RATE_LIMIT_REFUSALS_WINDOW_S", "600")),
        )

    @property
    def base_url(self) -> str:
        """The public base URL of this deployment, without a trailing slash."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
