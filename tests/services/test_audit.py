"""The continuous audit against a real chain (solana-local LiteSVM), on both databases:
consistent books give no difference; books made wrong on purpose give one difference with
the right figures and exactly one `audit.mismatch`, however often the audit runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair
from sqlalchemy import insert, select, update

from tests.jobs.support import Clock
from tests.support import Api, active_key, merchant_api
from zpay.chains.protocol import ChainUnavailable, TransferState
from zpay.jobs.audit import run_audit
from zpay.services.context import AppContext
from zpay.services.session_keys import load_secret, token_of
from zpay.store.audit_models import AuditFinding
from zpay.store.ids import new_id
from zpay.store.models import Event, Payment, SessionKey

USDC = 10**6


@pytest.fixture
async def api(ctx: AppContext, served: str) -> AsyncIterator[Api]:
    ctx.clock = Clock()
    async with httpx.AsyncClient(base_url=served, timeout=60) as http:
        yield await merchant_api(ctx, http)


async def audit_events(ctx: AppContext, type_: str | None = None) -> list[Event]:
    async with ctx.db.sessions() as s:
        stmt = select(Event).where(Event.type.like("audit.%")).order_by(Event.id)
        if type_ is not None:
            stmt = stmt.where(Event.type == type_)
        return list((await s.execute(stmt)).scalars())


async def finding(ctx: AppContext, key_id: str) -> AuditFinding:
    async with ctx.db.sessions() as s:
        row = await s.get(AuditFinding, key_id)
    assert row is not None
    return row


async def unrecorded_transfer(ctx: AppContext, key_id: str, amount: int) -> str:
    """Move funds out of a session wallet behind the books' back, as a bug would."""
    async with ctx.db.sessions() as s:
        key = await s.get(SessionKey, key_id)
        assert key is not None
        secret = await load_secret(ctx, s, key)
    adapter = ctx.chains.get(key.chain)
    recipient = str(Keypair().pubkey())
    prepared = await adapter.prepare_transfer(
        secret=secret,
        source=key.address,
        destination=recipient,
        token=token_of(key, adapter),
        amount_base_units=amount,
        reference_seed=new_id("rogue"),
    )
    await adapter.submit_transfer(prepared)
    status = await adapter.wait_for_transfer(prepared.reference, timeout_s=10)
    assert status.state is TransferState.CONFIRMED
    return recipient


async def faucet_into(ctx: AppContext, address: str, amount: int) -> None:
    adapter = ctx.chains.get("solana-local")
    await adapter.faucet(address, adapter.token("USDC"), amount)


async def edit_books(ctx: AppContext, key_id: str, **values: Any) -> None:
    async with ctx.db.transaction() as s:
        await s.execute(update(SessionKey).where(SessionKey.id == key_id).values(**values))


async def paid_key(api: Api, ctx: AppContext) -> tuple[dict[str, Any], str]:
    """A key funded with 500 that paid 91 through zpay; returns it and the payment id."""
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    paid = await api.pay(key["id"], "91", str(Keypair().pubkey()))
    assert paid.status_code == 201, paid.text
    return key, paid.json()["id"]


async def test_consistent_books_give_no_difference(ctx: AppContext, api: Api) -> None:
    key, _payment = await paid_key(api, ctx)
    assert await run_audit(ctx) == 1
    row = await finding(ctx, key["id"])
    assert (row.state, row.expected, row.on_chain, row.difference) == (
        "consistent",
        409 * USDC,
        409 * USDC,
        0,
    )
    assert row.reported_difference is None
    assert await audit_events(ctx) == []


async def test_an_unrecorded_transfer_is_one_difference_reported_once(
    ctx: AppContext, api: Api
) -> None:
    """The recipient holds 300 on chain while the books say 91 were paid."""
    clock = ctx.clock
    assert isinstance(clock, Clock)
    key, payment_id = await paid_key(api, ctx)
    await unrecorded_transfer(ctx, key["id"], 209 * USDC)

    assert await run_audit(ctx) == 1
    row = await finding(ctx, key["id"])
    assert (row.state, row.expected, row.on_chain, row.difference) == (
        "difference",
        409 * USDC,
        200 * USDC,
        -209 * USDC,
    )
    [event] = await audit_events(ctx)
    assert (event.type, event.object_type, event.object_id) == (
        "audit.mismatch",
        "session_key",
        key["id"],
    )
    data = event.data
    assert {
        k: data[k]
        for k in (
            "funded_amount",
            "spent_amount",
            "held_amount",
            "refunded_amount",
            "expected_amount",
            "on_chain_amount",
            "difference",
            "state",
            "session_key_id",
            "chain",
            "address",
            "previous_difference",
        )
    } == {
        "funded_amount": "500.000000",
        "spent_amount": "91.000000",
        "held_amount": "0.000000",
        "refunded_amount": "0.000000",
        "expected_amount": "409.000000",
        "on_chain_amount": "200.000000",
        "difference": "-209.000000",
        "state": "difference",
        "session_key_id": key["id"],
        "chain": "solana-local",
        "address": key["session_key_address"],
        "previous_difference": None,
    }
    assert data["merchant_id"] == event.merchant_id
    assert [p["id"] for p in data["recent_payments"]] == [payment_id]
    assert data["recent_payments"][0] | {"created_at": None} == {
        "id": payment_id,
        "status": "succeeded",
        "amount": "91.000000",
        "created_at": None,
    }
    assert data["payments"] == []  # nothing in flight

    for _ in range(2):  # the same difference, seen again: no new event
        clock.advance(seconds=ctx.settings.audit_interval_s)
        assert await run_audit(ctx) == 1
    assert len(await audit_events(ctx)) == 1
    assert (await finding(ctx, key["id"])).checked_at == clock.now

    # The books learn of the transfer: the difference is resolved, once.
    await edit_books(ctx, key["id"], spent_amount=300 * USDC)
    clock.advance(seconds=ctx.settings.audit_interval_s)
    assert await run_audit(ctx) == 1
    clock.advance(seconds=ctx.settings.audit_interval_s)
    assert await run_audit(ctx) == 1
    mismatch, resolved = await audit_events(ctx)
    assert mismatch.type == "audit.mismatch"
    assert resolved.type == "audit.resolved"
    assert (
        resolved.data["state"],
        resolved.data["difference"],
        resolved.data["previous_difference"],
    ) == ("consistent", "0.000000", "-209.000000")
    row = await finding(ctx, key["id"])
    assert (row.state, row.reported_difference) == ("consistent", None)


async def test_a_changed_difference_is_reported_again(ctx: AppContext, api: Api) -> None:
    clock = ctx.clock
    assert isinstance(clock, Clock)
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    await faucet_into(ctx, key["session_key_address"], 200 * USDC)  # straight in
    await run_audit(ctx)
    assert (await finding(ctx, key["id"])).difference == 200 * USDC
    await edit_books(ctx, key["id"], spent_amount=50 * USDC)  # books say 50 were paid
    clock.advance(seconds=ctx.settings.audit_interval_s)
    await run_audit(ctx)
    first, second = await audit_events(ctx, "audit.mismatch")
    assert (first.data["difference"], first.data["previous_difference"]) == ("200.000000", None)
    assert (
        second.data["expected_amount"],
        second.data["on_chain_amount"],
        second.data["difference"],
        second.data["previous_difference"],
    ) == ("450.000000", "700.000000", "250.000000", "200.000000")


async def _hold(ctx: AppContext, key: dict[str, Any], amount: int, status: str) -> str:
    """A payment left `status` with its hold, as a crash would leave it."""
    payment_id = new_id("pay")
    now = ctx.now()
    async with ctx.db.transaction() as s:
        row = await s.get(SessionKey, key["id"])
        assert row is not None
        await s.execute(
            insert(Payment).values(
                id=payment_id,
                merchant_id=row.merchant_id,
                session_key_id=row.id,
                agent_id=row.agent_id,
                chain=row.chain,
                amount=amount,
                recipient=str(Keypair().pubkey()),
                status=status,
                created_at=now,
                updated_at=now,
            )
        )
        row.held_amount += amount
    return payment_id


async def test_payments_in_flight_are_a_band_not_a_difference(ctx: AppContext, api: Api) -> None:
    clock = ctx.clock
    assert isinstance(clock, Clock)
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    payment_id = await _hold(ctx, key, 30 * USDC, "submitted")
    await run_audit(ctx)  # not sent yet, as far as the chain shows
    row = await finding(ctx, key["id"])
    assert (row.state, row.difference) == ("in_flight", 0)

    await unrecorded_transfer(ctx, key["id"], 30 * USDC)  # it landed; books don't know yet
    clock.advance(seconds=ctx.settings.audit_interval_s)
    await run_audit(ctx)
    row = await finding(ctx, key["id"])
    assert (row.state, row.difference) == ("in_flight", -30 * USDC)

    await unrecorded_transfer(ctx, key["id"], 1)  # one base unit more than the band allows
    clock.advance(seconds=ctx.settings.audit_interval_s)
    await run_audit(ctx)
    row = await finding(ctx, key["id"])
    assert (row.state, row.difference) == ("difference", -30 * USDC - 1)
    [event] = await audit_events(ctx)
    assert event.data["payments"][0] | {"created_at": None} == {
        "id": payment_id,
        "status": "submitted",
        "amount": "30.000000",
        "created_at": None,
    }
    assert (event.data["expected_min"], event.data["expected_max"], event.data["in_flight"]) == (
        "470.000000",
        "500.000000",
        ["payments"],
    )


async def test_an_unreadable_chain_is_neither_ok_nor_a_difference(
    ctx: AppContext, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ctx.clock
    assert isinstance(clock, Clock)
    _agent, key, _user = await active_key(api, ctx, max_amount="500")
    await faucet_into(ctx, key["session_key_address"], 5 * USDC)
    await run_audit(ctx)
    assert len(await audit_events(ctx)) == 1

    async def down(*_args: Any, **_kwargs: Any) -> int:
        raise ChainUnavailable("rpc down")

    monkeypatch.setattr(ctx.chains.get("solana-local"), "balance", down)
    clock.advance(seconds=ctx.settings.audit_interval_s)
    assert await run_audit(ctx) == 1
    row = await finding(ctx, key["id"])
    assert (row.state, row.error_code, row.on_chain, row.difference) == (
        "unreadable",
        "chain_unavailable",
        None,
        None,
    )
    assert row.reported_difference == 5 * USDC  # still open: not resolved by a blind spot
    assert len(await audit_events(ctx)) == 1
    body = await api.ok("GET", "/v1/audit")
    [shown] = body["data"]
    assert (
        shown["state"],
        shown["error_code"],
        shown["on_chain_amount"],
        shown["difference"],
        shown["reported_difference"],
    ) == ("unreadable", "chain_unavailable", None, None, "5.000000")


async def test_the_api_answers_the_merchant_alone(ctx: AppContext, api: Api) -> None:
    agent, key, _user = await active_key(api, ctx, max_amount="500")
    _agent, other_key, _user = await active_key(api, ctx, max_amount="5")
    await faucet_into(ctx, key["session_key_address"], 800 * USDC)

    body = await api.ok("GET", "/v1/audit")
    assert body["object"] == "list" and body["has_more"] is False
    by_key = {f["session_key_id"]: f for f in body["data"]}
    assert set(by_key) == {key["id"], other_key["id"]}
    wrong = by_key[key["id"]]
    assert (
        wrong["state"],
        wrong["expected_amount"],
        wrong["on_chain_amount"],
        wrong["difference"],
    ) == ("difference", "500.000000", "1300.000000", "800.000000")
    assert by_key[other_key["id"]]["state"] == "consistent"
    assert await audit_events(ctx) == []  # reading the audit writes nothing

    page = await api.ok("GET", "/v1/audit", limit=1)
    assert page["has_more"] is True and len(page["data"]) == 1
    rest = await api.ok("GET", "/v1/audit", limit=1, starting_after=page["next_cursor"])
    assert {page["data"][0]["session_key_id"], rest["data"][0]["session_key_id"]} == set(by_key)
    one = await api.ok("GET", "/v1/audit", session_key_id=key["id"])
    assert [f["session_key_id"] for f in one["data"]] == [key["id"]]

    refused = await api.as_(agent["token"]).get("/v1/audit")
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "merchant_key_required"

    other = api.as_((await merchant_api(ctx, api.http, "other shop")).token)
    assert (await other.ok("GET", "/v1/audit"))["data"] == []
    assert (await other.ok("GET", "/v1/audit", session_key_id=key["id"]))["data"] == []
    assert (await api.http.get("/v1/audit")).status_code == 401
    schema = (await api.http.get("/schema/openapi.json")).json()
    assert "/v1/audit" in schema["paths"]
