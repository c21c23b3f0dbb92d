"""Concurrent authorizations serialize: no interleaving can overspend; idempotency holds."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from solders.keypair import Keypair
from sqlalchemy import func, select

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext
from zpay.store.models import Payment


async def test_fifty_concurrent_payments_on_a_key_funded_for_ten(ctx: AppContext,
                                                                 served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=120,
                                 limits=httpx.Limits(max_connections=64)) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        agent_api = api.as_(agent["token"])
        to = str(Keypair().pubkey())
        responses = await asyncio.gather(*(agent_api.pay(key["id"], "1", to) for _ in range(50)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 10, [r.text for r in responses if r.status_code != 402][:3]
        refused = [r.json()["code"] for r in responses if r.status_code != 201]
        assert refused == ["insufficient_session_balance"] * 40
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert status["spent_amount"] == status["funded_amount"] == "10.000000"
        assert status["held_amount"] == "0.000000" and status["status"] == "exhausted"
        adapter = ctx.chains.get("solana-local")
        token = adapter.token("USDC")
        assert await adapter.balance(key["session_key_address"], token) == 0
        assert await adapter.balance(to, token) == 10 * 10**6


async def test_idempotency_key_twenty_concurrent_then_replay_then_other_body(
    ctx: AppContext, served: str
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=120,
                                 limits=httpx.Limits(max_connections=64)) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="100")
        agent_api = api.as_(agent["token"])
        to = str(Keypair().pubkey())
        idem = str(uuid.uuid4())
        responses = await asyncio.gather(
            *(agent_api.pay(key["id"], "7", to, idem=idem) for _ in range(20)))
        # The key is bound to the payment with its hold: every request answers THE payment,
        # as it stands (201 once final, 202 while in flight); exactly one made it.
        assert all(r.status_code in (201, 202) for r in responses), [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        made = [r for r in responses if r.headers.get("idempotent-replayed") != "true"]
        assert len(made) == 1 and made[0].status_code == 201
        created = made
        async with ctx.db.sessions() as s:
            count = (await s.execute(select(func.count()).select_from(Payment).where(
                Payment.session_key_id == key["id"]))).scalar_one()
        assert count == 1
        adapter = ctx.chains.get("solana-local")
        assert await adapter.balance(to, adapter.token("USDC")) == 7 * 10**6

        replay = await agent_api.pay(key["id"], "7", to, idem=idem)
        assert replay.status_code == 201
        assert replay.json() == created[0].json()
        assert replay.headers.get("idempotent-replayed") == "true"

        other = await agent_api.pay(key["id"], "8", to, idem=idem)
        assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")

        # keys are scoped per merchant: another merchant may use the same key
        other_merchant = await merchant_api(ctx, http, "other")
        resp = await other_merchant.pay(key["id"], "7", to, idem=idem)
        assert resp.status_code == 404  # its own request, judged on its own (unknown key)
        assert await adapter.balance(to, adapter.token("USDC")) == 7 * 10**6


async def test_idempotency_records_are_kept_a_day(ctx: AppContext, served: str) -> None:
    from zpay.store.models import IdempotencyRecord

    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        _, key, _ = await active_key(api, ctx, max_amount="5")
        idem = str(uuid.uuid4())
        assert (await api.pay(key["id"], "1", str(Keypair().pubkey()), idem=idem)
                ).status_code == 201
    async with ctx.db.sessions() as s:
        record = (await s.execute(select(IdempotencyRecord).where(
            IdempotencyRecord.key == idem))).scalar_one()
    assert (record.expires_at - record.created_at).total_seconds() >= 24 * 3600
