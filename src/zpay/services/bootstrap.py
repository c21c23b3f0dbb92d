"""Start-up checks that keep the books and a local chain from silently diverging."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from zpay.chains.protocol import ChainAdapter
from zpay.services.context import AppContext
from zpay.store.database import NotMigrated
from zpay.store.models import ChainInstance, SessionKey


class StartupRefused(RuntimeError):
    """Start-up cannot go on; the message is one sentence naming what and where, and the
    fix. The CLI prints it without a traceback."""


class ChainPairingError(StartupRefused):
    pass


async def pair_local_chain(ctx: AppContext, adapter: ChainAdapter) -> None:
    instance_id: str | None = getattr(adapter, "instance_id", None)
    if instance_id is None or not adapter.network.local:
        return
    name = adapter.network.name
    state_dir = ctx.settings.data_dir / "chains" / name
    # Where the chain lives, for the refusals: an adapter may say (an external node),
    # else it is the state directory.
    where = getattr(adapter, "instance_location", None) or f"the chain state directory {state_dir}"
    async with ctx.db.transaction() as s:
        row = await s.get(ChainInstance, name)
        if row is None:
            books = (
                await s.execute(
                    select(func.count()).select_from(SessionKey).where(SessionKey.chain == name)
                )
            ).scalar_one()
            if books:
                raise ChainPairingError(
                    f"the database holds {books} session keys on {name}, but {where} holds a "
                    f"new chain; restore the chain that belongs to this database or use a "
                    f"fresh database"
                )
            s.add(ChainInstance(network=name, instance_id=instance_id, created_at=ctx.now()))
        elif row.instance_id != instance_id:
            raise ChainPairingError(
                f"{where} holds another {name} instance ({instance_id}) or a fresh chain, not "
                f"the one the database belongs to ({row.instance_id}); restore that chain or "
                f"use a fresh database. Refusing to start so books and chain cannot diverge"
            )


def startup_refusal(exc: BaseException, data_dir: Path, safe_db_url: str) -> StartupRefused | None:
    """The operator's sentence for a start-up failure that is the environment's, not a bug
    (an unwritable or unusable data directory, a database that cannot be opened), or None
    when `exc` is a bug or already such a sentence (`StartupRefused`, `NotMigrated`)."""
    if isinstance(exc, StartupRefused | NotMigrated):
        return None  # already the sentence
    if isinstance(exc, OSError) and exc.filename is not None:
        return StartupRefused(
            f"cannot use {exc.filename} ({exc.strerror or type(exc).__name__}); make the data "
            f"directory {data_dir} writable by this user, or point ZPAY_DATA_DIR at one that is")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | ConnectionError):
        return StartupRefused(
            f"cannot open the database at {safe_db_url} ({_first_line(exc)}); check that it is "
            f"running and reachable and that its directory is writable, or set "
            f"ZPAY_DATABASE_URL")
    return None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
