"""Start-up checks that keep the books and a local chain from silently diverging."""

from __future__ import annotations

from sqlalchemy import func, select

from zpay.chains.protocol import ChainAdapter
from zpay.services.context import AppContext
from zpay.store.models import ChainInstance, SessionKey


class ChainPairingError(RuntimeError):
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
