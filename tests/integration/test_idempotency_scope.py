"""Idempotency-Keys belong to a principal (an agent, a session token, the merchant acting as
itself), not to the merchant: another agent sending the same key and body never receives
the first one's payment, and cannot spoil its key. Amounts compare by value."""

from __future__ import annotations

import httpx
from solders.keypair import Keypair

from tests.support import active_key, merchant_api
from zpay.services.context import AppContext


async def test_another_agent_never_gets_a_payment_by_its_idempotency_key(
        ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent_a, key_a, _ = await active_key(api, ctx, max_amount="50")
        agent_b, key_b, _ = await active_key(api, ctx, max_amount="50")
        a, b = api.as_(agent_a["token"]), api.as_(agent_b["token"])
        to = str(Keypair().pubkey())

        paid = await a.pay(key_a["id"], "3", to, idem="order-1")
        assert paid.status_code == 201
        # B replays A's key and body: not A's payment (ids, recipient, tx) as a replay —
        # B cannot see A's key at all.
        stolen = await b.pay(key_a["id"], "3", to, idem="order-1")
        assert stolen.status_code == 404 and "Idempotent-Replayed" not in stolen.headers
        assert paid.json()["id"] not in stolen.text
        # B's own payment under the same key, another body: B's, not a 422.
        own = await b.pay(key_b["id"], "4", to, idem="order-1")
        assert own.status_code == 201 and own.json()["id"] != paid.json()["id"]
        # A's key still answers A's payment, untouched.
        again = await a.pay(key_a["id"], "3", to, idem="order-1")
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == paid.json()

        # B uses a key first, A then (another body): A is not poisoned for 24 h.
        first = await b.pay(key_b["id"], "1", to, idem="order-2")
        assert first.status_code == 201
        mine = await a.pay(key_a["id"], "2", to, idem="order-2")
        assert mine.status_code == 201 and mine.json()["session_key_id"] == key_a["id"]

        # The merchant acting as itself has its own keys too.
        merchant = await api.pay(key_a["id"], "1", to, idem="order-1")
        assert merchant.status_code == 201 and merchant.json()["id"] != paid.json()["id"]

        a_status = await api.ok("GET", f"/v1/session-keys/{key_a['id']}")
        b_status = await api.ok("GET", f"/v1/session-keys/{key_b['id']}")
        assert (a_status["spent_amount"], b_status["spent_amount"]) == ("6.000000", "5.000000")


async def test_amounts_compare_by_value_under_one_key(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="50")
        me = api.as_(agent["token"])
        to = str(Keypair().pubkey())
        paid = await me.pay(key["id"], "0.02", to, idem="k")
        assert paid.status_code == 201
        same = await me.pay(key["id"], "0.020000", to, idem="k")
        assert same.headers.get("Idempotent-Replayed") == "true"
        assert same.json()["id"] == paid.json()["id"]
        other = await me.pay(key["id"], "0.2", to, idem="k")
        assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert status["spent_amount"] == "0.020000"
