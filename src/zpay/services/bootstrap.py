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
    async with ctx.db.transaction() as s:
        row = await s.get(ChainInstance, name)
        if row is None:
            books = (await s.execute(select(func.count()).select_from(SessionKey).where(
                SessionKey.chain == name))).scalar_one()
            if books:
                raise ChainPairingError(
                    f"the database holds {books} session keys on {name}, but the local chain "
                    f"state is new; restore the chain state directory ({state_dir}) or use a "
                    f"fresh database")
            s.add(ChainInstance(network=name, instance_id=instance_id, created_at=ctx.now()))
        elif row.instance_id != instance_id:
            raise ChainPairingError(
                f"the database belongs to another {name} instance ({row.instance_id}) than the "
                f"chain state directory {state_dir} holds ({instance_id}); refusing to start "
                f"so books and chain cannot diverge")
