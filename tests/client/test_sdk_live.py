"""Every SDK method, sync and async, against the app served over real HTTP (SQLite and
PostgreSQL). One scenario drives both clients; the sync one runs in worker threads because
the server shares this event loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from solders.keypair import Keypair

from zpay.client import (
    AsyncZpay,
    AuthenticationError,
    Conflict,
    NotFound,
    PaymentRefused,
    PermissionDenied,
    SolanaWallet,
    Zpay,
    aio,
    sync,
)
from zpay.jobs.delivery import dispatch_all
from zpay.jobs.refunds import run_refunds
from zpay.services.context import AppContext
from zpay.services.merchants import create_merchant


class Runner:
    """Calls an SDK method of either client and records which ones were used."""

    def __init__(self, sync_client: bool) -> None:
        self.sync = sync_client
        self.used: set[str] = set()

    def _note(self, fn: Callable[..., Any]) -> None:
        self.used.add(fn.__qualname__)

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self._note(fn)
        if self.sync:
            return await asyncio.to_thread(fn, *args, **kw)
        return await fn(*args, **kw)

    async def all(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> list[Any]:
        """Every item of a paginated list, following cursors."""
        self._note(fn)
        if self.sync:
            return await asyncio.to_thread(lambda: list(fn(*args, **kw)))
        return [item async for item in fn(*args, **kw)]


def public_methods(module: Any) -> set[str]:
    """Every public method of a client module's resources, as `Class.method`."""
    client_cls = module.Zpay if module is sync else module.AsyncZpay
    names = {f"{client_cls.__name__}.health"}
    for cls in (module.Agents, module.Sessions, module.SessionKeys, module.Payments,
                module.Webhooks, module.Events, module.Faucet):
        names |= {f"{cls.__name__}.{n}" for n, _ in inspect.getmembers(cls, inspect.isfunction)
                  if not n.startswith("_")}
    return names


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_every_sdk_method_over_http(ctx: AppContext, served: str, flavour: str) -> None:
    merchant = await create_merchant(ctx, "shop")
    z: Zpay | AsyncZpay
    z = (Zpay if flavour == "sync" else AsyncZpay)(merchant.api_key, base_url=served)
    run = Runner(flavour == "sync")
    try:
        await scenario(ctx, z, run)
    finally:
        if isinstance(z, Zpay):
            z.close()
        else:
            await z.aclose()
    assert run.used == public_methods(sync if flavour == "sync" else aio)


async def scenario(ctx: AppContext, z: Any, run: Runner) -> None:
    assert await run(z.health) is True
    user = SolanaWallet.generate()
    shop = str(Keypair().pubkey())
    drip = await run(z.faucet.drip, user.address, "100")
    assert (drip.amount, drip.balance, drip.chain) == (Decimal(100), Decimal(100), "solana-local")

    # agents
    agent = await run(z.agents.create, "shopper")
    assert agent.token.startswith("agent_test_") and agent.status == "active"
    assert (await run(z.agents.get, agent.id)).token is None  # shown once
    assert agent.id in [a.id for a in await run.all(z.agents.list)]

    # policy sessions
    session = await run(z.sessions.create, agent.id, max_per_transaction="25", max_per_day="60",
                        expires_in_seconds=3600)
    assert session.access_token.startswith("as_test_")
    assert session.max_per_transaction == Decimal(25) and session.status == "active"
    other = await run(z.agents.create_session, agent.id, max_total=Decimal("10"))
    assert other.max_total == Decimal(10)
    assert (await run(z.sessions.get, session.id)).windows["mode"] == "rolling"
    listed = await run.all(z.sessions.list, agent_id=agent.id, limit=1)
    assert {s.id for s in listed} == {session.id, other.id}
    assert (await run(z.sessions.revoke, other.id)).status == "revoked"

    # session keys: create, renew, approve
    key = await run(z.session_keys.create, agent.id, user.address, "40",
                    expires_in_seconds=3600, session_id=session.id)
    assert key.status == "pending_approval" and key.max_amount == Decimal(40)
    assert key.approval is not None and key.linked_session_id == session.id
    renewed = await run(z.session_keys.renew_approval, key.id)
    assert renewed.id != key.approval.id and renewed.kind == "funding"
    # Every renewal shares its funding's identity: with the chain's blockhash unchanged the
    # renewal IS the same transaction (one signature, so it can land once), never a second
    # debit of the user.
    assert renewed.raw["approval_transaction"] == key.approval.raw["approval_transaction"]
    key = await run(z.session_keys.approve, key.id, user)
    assert (key.status, key.funded_amount) == ("active", Decimal(40))
    assert (await run(z.session_keys.get_status, key.id)).remaining_amount == Decimal(40)

    second = await run(z.session_keys.create, agent.id, user.address, "5",
                       expires_in_seconds=3600)
    second = await run(z.session_keys.submit_approval, second.id, user.sign_approval(second))
    assert second.status == "active"

    # paying as the agent: both layers apply while linked
    az = z.with_token(agent.token)
    with pytest.raises(PaymentRefused) as refused:
        await run(az.payments.create, key.id, "30", shop)
    assert refused.value.code == "per_transaction_limit" and refused.value.status == 402
    paid = await run(az.payments.create, key.id, "25", shop, description="book")
    assert paid.status == "succeeded" and paid.idempotency_key and not paid.replayed
    again = await run(az.payments.create, key.id, "25", shop, description="book",
                      idempotency_key=paid.idempotency_key)
    assert again.id == paid.id and again.replayed  # the retry did not pay twice
    assert (await run(az.payments.create, key.id, "15", shop)).status == "succeeded"
    assert (await run(z.session_keys.get_status, key.id)).status == "exhausted"

    top_up = await run(z.session_keys.top_up, key.id, "30")
    assert (top_up.kind, top_up.amount, top_up.session_key_id) == ("top_up", Decimal(30), key.id)
    fresh = await run(z.session_keys.renew_top_up, key.id, top_up.id)
    key = await run(z.session_keys.submit_top_up, key.id, fresh.id, user.sign_approval(fresh))
    assert (key.status, key.funded_amount, key.remaining_amount) == (
        "active", Decimal(70), Decimal(30))

    with pytest.raises(PaymentRefused) as refused:
        await run(az.payments.create, key.id, "25", shop)
    assert refused.value.code == "daily_limit"
    check = await run(az.session_keys.can_afford, key.id, "10", recipient=shop)
    assert check.allowed and check.session_remaining_today == Decimal(20)
    assert not (await run(az.session_keys.can_afford, key.id, "25")).allowed

    assert (await run(z.session_keys.unlink_session, key.id)).linked_session_id is None
    last = await run(az.payments.create, key.id, "25", shop)  # only the balance applies now
    assert last.status == "succeeded"
    relinked = await run(z.session_keys.link_session, key.id, session.id)
    assert relinked.linked_session_id == session.id

    assert (await run(z.payments.get, last.id)).amount == Decimal(25)
    assert (await run(z.payments.wait, last.id, timeout_s=5)).status == "succeeded"
    payments = await run.all(z.payments.list, session_key_id=key.id, limit=2)
    assert [p.amount for p in payments] == [Decimal(25), Decimal(15), Decimal(25)]
    reasons = [a.reason for a in await run.all(z.session_keys.attempts, key.id)]
    assert reasons == ["approved", "daily_limit", "approved", "approved",
                       "per_transaction_limit"]
    keys = await run.all(z.session_keys.list, limit=1)
    assert [k.id for k in keys] == [second.id, key.id]
    assert [k.id for k in await run.all(z.session_keys.list, status="exhausted")] == []
    types = {e.type for e in await run.all(z.events.list, object_id=key.id)}
    assert {"session_key.created", "session_key.activated", "session_key.topped_up"} <= types

    # webhooks
    endpoint = await run(z.webhooks.create, "http://127.0.0.1:9/hooks",
                         event_types=["session_key.revoked"], description="books")
    assert endpoint.secret and endpoint.event_types == ["session_key.revoked"]
    assert [e.id for e in await run.all(z.webhooks.list)] == [endpoint.id]
    assert (await run(z.webhooks.get, endpoint.id)).secret is None
    updated = await run(z.webhooks.update, endpoint.id, event_types=None, description=None)
    assert (updated.event_types, updated.description, updated.url) == (
        None, None, endpoint.url)

    # revoke: the refund job returns the rest to the user
    revoked = await run(z.session_keys.revoke, key.id)
    assert (revoked.status, revoked.refund_status) == ("revoked", "pending")
    with pytest.raises(Conflict):
        await run(z.session_keys.revoke, key.id)
    await run_refunds(ctx)
    refunded = await run(z.session_keys.wait_for_refund, key.id, timeout_s=10, poll_s=0.1)
    assert (refunded.refund_status, refunded.refunded_amount) == ("done", Decimal(5))
    adapter = ctx.chains.get("solana-local")
    assert await adapter.balance(user.address, adapter.token("USDC")) == (100 - 75 + 5) * 10**6

    await dispatch_all(ctx)
    deliveries = await run.all(z.webhooks.deliveries, endpoint.id, status="pending")
    # every type since the update, including events written before the endpoint existed
    assert {"session_key.revoked", "payment.succeeded"} <= {d.event_type for d in deliveries}
    delivery = await run(z.webhooks.get_delivery, deliveries[0].id)
    assert delivery.endpoint_id == endpoint.id
    assert (await run(z.webhooks.redeliver, delivery.id)).status == "pending"
    assert (await run(z.webhooks.delete, endpoint.id)).deleted

    # credentials: rotate, freeze, delete
    with pytest.raises(PermissionDenied) as denied:
        await run(az.agents.create, "rogue")
    assert denied.value.code == "merchant_key_required"
    rotated = await run(z.agents.rotate_token, agent.id)
    with pytest.raises(AuthenticationError):
        await run(az.session_keys.get_status, second.id)
    az = z.with_token(rotated.token)
    assert (await run(z.agents.freeze, agent.id)).status == "frozen"
    with pytest.raises(AuthenticationError) as frozen:
        await run(az.session_keys.get_status, second.id)
    assert frozen.value.code == "agent_frozen"
    assert (await run(z.agents.unfreeze, agent.id)).status == "active"
    assert (await run(az.session_keys.get_status, second.id)).status == "active"
    assert (await run(z.agents.delete, agent.id)).deleted
    with pytest.raises(NotFound) as missing:
        await run(z.agents.get, agent.id)
    assert missing.value.code == "agent_not_found"
