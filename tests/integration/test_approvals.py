"""Tampered approvals are refused and nothing moves; one approval funds at most once."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from tests.support import Api, funded_user, merchant_api
from zpay.client.wallet import SolanaWallet
from zpay.services.context import AppContext

TRANSFER_CHECKED = 12


def _tx(approval: dict[str, Any]) -> Transaction:
    return Transaction.from_bytes(base64.b64decode(approval["approval_transaction"]))


def _resign(message: Message, signer: Keypair, original: Transaction) -> dict[str, str]:
    signers = list(message.account_keys[: message.header.num_required_signatures])
    sigs = list(original.signatures)
    sigs[signers.index(signer.pubkey())] = signer.sign_message(bytes(message))
    return {"signed_transaction": base64.b64encode(bytes(Transaction.populate(message, sigs))
                                                   ).decode()}


def _rebuild(tx: Transaction, *, data: Callable[[bytes], bytes] | None = None,
             key_swap: tuple[Pubkey, Pubkey] | None = None) -> Message:
    msg = tx.message
    keys = [key_swap[1] if key_swap and k == key_swap[0] else k for k in msg.account_keys]
    ixs = []
    from solders.instruction import CompiledInstruction

    for ix in msg.instructions:
        raw = bytes(ix.data)
        if data and raw and raw[0] == TRANSFER_CHECKED:
            raw = data(raw)
        ixs.append(CompiledInstruction(ix.program_id_index, raw, bytes(ix.accounts)))
    return Message.new_with_compiled_instructions(
        msg.header.num_required_signatures, msg.header.num_readonly_signed_accounts,
        msg.header.num_readonly_unsigned_accounts, keys, msg.recent_blockhash, ixs)


async def _setup(ctx: AppContext, http: httpx.AsyncClient) -> tuple[Api, dict[str, Any],
                                                                    SolanaWallet, dict[str, Any]]:
    api = await merchant_api(ctx, http)
    agent = await api.ok("POST", "/v1/agents", {"name": "a"})
    user = await funded_user(ctx, 1_000 * 10**6)
    key = await api.ok("POST", "/v1/session-keys", {
        "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "100",
        "expires_in_seconds": 3600})
    return api, agent, user, key


async def _balances(ctx: AppContext, *addresses: str) -> list[int]:
    adapter = ctx.chains.get("solana-local")
    return [await adapter.balance(a, adapter.token("USDC")) for a in addresses]


def _transfer_destination(tx: Transaction) -> Pubkey:
    for ix in tx.message.instructions:
        if bytes(ix.data)[:1] == bytes([TRANSFER_CHECKED]):
            # transfer_checked accounts: source, mint, destination, owner
            return tx.message.account_keys[ix.accounts[2]]
    raise AssertionError("no transfer_checked")


@pytest.mark.parametrize("tamper", ["amount", "destination", "other_signer"])
async def test_tampered_approval_refused_nothing_moves(ctx: AppContext, served: str,
                                                       tamper: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api, _, user, key = await _setup(ctx, http)
        tx = _tx(key)
        before = await _balances(ctx, user.address, key["session_key_address"])
        if tamper == "amount":
            msg = _rebuild(tx, data=lambda raw: raw[:1] + struct.pack("<Q", 900 * 10**6) + raw[9:])
            body = _resign(msg, user.keypair, tx)
        elif tamper == "destination":
            thief = Keypair().pubkey()
            msg = _rebuild(tx, key_swap=(_transfer_destination(tx), thief))
            body = _resign(msg, user.keypair, tx)
        else:
            other = Keypair()
            sigs = list(tx.signatures)
            signers = list(tx.message.account_keys[: tx.message.header.num_required_signatures])
            sigs[signers.index(user.keypair.pubkey())] = other.sign_message(bytes(tx.message))
            body = {"signed_transaction": base64.b64encode(
                bytes(Transaction.populate(tx.message, sigs))).decode()}
        resp = await api.post(f"/v1/session-keys/{key['id']}/approval", body)
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        expected = "approval_signature_invalid" if tamper == "other_signer" else "approval_mismatch"
        assert resp.json()["code"] == expected
        assert await _balances(ctx, user.address, key["session_key_address"]) == before
        status = await api.ok("GET", f"/v1/session-keys/{key['id']}")
        assert (status["status"], status["funded_amount"]) == ("pending_approval", "0.000000")
        # the genuine approval still works afterwards
        ok = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", user.sign_approval(key))
        assert ok["status"] == "active"


async def test_approval_of_key_a_submitted_for_key_b(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api, agent, user, key_a = await _setup(ctx, http)
        key_b = await api.ok("POST", "/v1/session-keys", {
            "agent_id": agent["id"], "user_wallet": user.address, "max_amount": "100",
            "expires_in_seconds": 3600})
        before = await _balances(ctx, user.address, key_a["session_key_address"],
                                 key_b["session_key_address"])
        resp = await api.post(f"/v1/session-keys/{key_b['id']}/approval",
                              user.sign_approval(key_a))
        assert (resp.status_code, resp.json()["code"]) == (422, "approval_mismatch")
        assert await _balances(ctx, user.address, key_a["session_key_address"],
                               key_b["session_key_address"]) == before


async def test_lapsed_blockhash_then_fresh_approval(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api, _, user, key = await _setup(ctx, http)
        signed = user.sign_approval(key)
        ctx.chains.get("solana-local").advance_blockhash()  # type: ignore[attr-defined]
        before = await _balances(ctx, user.address, key["session_key_address"])
        resp = await api.post(f"/v1/session-keys/{key['id']}/approval", signed)
        assert (resp.status_code, resp.json()["code"]) == (422, "approval_expired")
        assert await _balances(ctx, user.address, key["session_key_address"]) == before
        # the lapsed approval stays dead; a fresh one funds
        again = await api.post(f"/v1/session-keys/{key['id']}/approval", signed)
        assert again.json()["code"] == "approval_expired"
        fresh = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval/renew")
        assert fresh["approval_transaction"] != key["approval_transaction"]
        status = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval",
                              user.sign_approval(fresh))
        assert status["status"] == "active"
        assert await _balances(ctx, key["session_key_address"]) == [100 * 10**6]


async def test_same_signed_approval_twice_funds_once(ctx: AppContext, served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as http:
        api, _, user, key = await _setup(ctx, http)
        signed = user.sign_approval(key)
        first = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", signed)
        second = await api.ok("POST", f"/v1/session-keys/{key['id']}/approval", signed)
        assert first["funded_amount"] == second["funded_amount"] == "100.000000"
        assert await _balances(ctx, key["session_key_address"], user.address) == [
            100 * 10**6, 900 * 10**6]
