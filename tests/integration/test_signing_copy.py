"""A payment signs with this process's copy of its key's row (services.payments
`_signing_key`): what signing reads never changes, and nothing is decided from the copy.
A key linked, unlinked or revoked after the copy was made is answered from the database,
at once, on both databases; the books end equal to the chain."""

from __future__ import annotations

import httpx
from solders.keypair import Keypair

from tests.integration.test_lifecycle import chain_balance
from tests.support import active_key, merchant_api
from zpay.services.context import AppContext


async def test_a_kept_copy_never_decides_who_may_pay_nor_what(ctx: AppContext,
                                                              served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api = await merchant_api(ctx, http)
        agent, key, _ = await active_key(api, ctx, max_amount="10")
        me = api.as_(agent["token"])
        to = str(Keypair().pubkey())
        assert (await me.pay(key["id"], "1", to)).status_code == 201  # the copy is made

        # Linked since: the session's own token may pay with it (the copy says unlinked).
        session = await api.ok("POST", "/v1/sessions",
                               {"agent_id": agent["id"], "max_per_transaction": "2"})
        as_session = api.as_(session["access_token"])
        assert (await as_session.pay(key["id"], "1", to)).status_code == 404
        await api.ok("POST", f"/v1/session-keys/{key['id']}/link", {"session_id": session["id"]})
        paid = await as_session.pay(key["id"], "2", to)
        assert paid.status_code == 201, paid.text
        refused = await as_session.pay(key["id"], "3", to)  # the session's limit applies
        assert (refused.status_code, refused.json()["code"]) == (402, "per_transaction_limit")

        # Unlinked since: the session's token may not (the copy says linked).
        await api.ok("DELETE", f"/v1/session-keys/{key['id']}/link")
        gone = await as_session.pay(key["id"], "1", to)
        assert (gone.status_code, gone.json()["code"]) == (404, "session_key_not_found")

        # Another merchant never reaches the copy.
        other = await merchant_api(ctx, http, name="other")
        assert (await other.pay(key["id"], "1", to)).status_code == 404

        # Revoked since: refused at once.
        await api.ok("POST", f"/v1/session-keys/{key['id']}/revoke")
        revoked = await me.pay(key["id"], "1", to)
        assert (revoked.status_code, revoked.json()["code"]) == (402, "session_key_revoked")

        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert status["spent_amount"] == "3.000000"
        assert await chain_balance(ctx, to) == 3 * 10**6
        assert await chain_balance(ctx, key["session_key_address"]) == 7 * 10**6
