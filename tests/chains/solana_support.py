"""Helpers for the Solana adapter tests: a wallet that signs like Phantom, tampering tools,
and one environment per backend (embedded LiteSVM, JSON-RPC against a fake node)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.instruction import CompiledInstruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from tests.chains.fake_solana_rpc import FakeSolanaRpc
from zpay.chains.protocol import Family, IssuedApproval, NetworkInfo, TokenInfo
from zpay.chains.registry import NetworkSpec, TokenSpec, get_network
from zpay.chains.solana import SolanaAdapter
from zpay.chains.solana_local import LocalChain

TRANSFER_CHECKED = 12
BACKENDS = ["local", "rpc"]


def approval_tx(issued: IssuedApproval) -> Transaction:
    return Transaction.from_bytes(base64.b64decode(issued.public["approval_transaction"]))


def sign_message_as(message: Message, signer: Keypair, original: Transaction) -> dict[str, str]:
    """What a wallet returns: `message` with `signer`'s signature in its slot."""
    signers = list(message.account_keys[: message.header.num_required_signatures])
    signatures = list(original.signatures)
    signatures[signers.index(signer.pubkey())] = signer.sign_message(bytes(message))
    signed = Transaction.populate(message, signatures)
    return {"signed_transaction": base64.b64encode(bytes(signed)).decode()}


def wallet_sign(issued: IssuedApproval, user: Keypair) -> dict[str, str]:
    """Sign the issued approval exactly as a wallet would (message untouched)."""
    tx = approval_tx(issued)
    return sign_message_as(tx.message, user, tx)


def rebuild(
    tx: Transaction,
    *,
    data: Callable[[bytes], bytes] | None = None,
    key_swap: tuple[Pubkey, Pubkey] | None = None,
) -> Message:
    """The issued message with the transfer_checked data or one account key changed."""
    msg = tx.message
    keys = [key_swap[1] if key_swap and k == key_swap[0] else k for k in msg.account_keys]
    instructions = []
    for ix in msg.instructions:
        raw = bytes(ix.data)
        if data and raw[:1] == bytes([TRANSFER_CHECKED]):
            raw = data(raw)
        instructions.append(CompiledInstruction(ix.program_id_index, raw, bytes(ix.accounts)))
    return Message.new_with_compiled_instructions(
        msg.header.num_required_signatures,
        msg.header.num_readonly_signed_accounts,
        msg.header.num_readonly_unsigned_accounts,
        keys,
        msg.recent_blockhash,
        instructions,
    )


def transfer_destination(tx: Transaction) -> Pubkey:
    for ix in tx.message.instructions:
        if bytes(ix.data)[:1] == bytes([TRANSFER_CHECKED]):
            # transfer_checked accounts: source, mint, destination, owner
            return tx.message.account_keys[ix.accounts[2]]
    raise AssertionError("no transfer_checked instruction")


@dataclass
class SolanaEnv:
    """One network under test; `chain` is the LiteSVM behind it either way."""

    kind: str
    adapter: SolanaAdapter
    chain: LocalChain
    rpc: FakeSolanaRpc | None
    usdc: TokenInfo

    async def fund(self, owner: str, amount_base_units: int) -> None:
        if self.kind == "local":
            await self.adapter.faucet(owner, self.usdc, amount_base_units)
        else:
            # No faucet on an RPC network: mint behind the node's back, like a devnet faucet.
            self.chain.faucet_mint(
                Pubkey.from_string(owner), Pubkey.from_string(self.usdc.address), amount_base_units
            )

    def advance_blockhash(self) -> None:
        if self.kind == "local":
            self.adapter.advance_blockhash()
        else:
            self.chain.advance_blockhash()

    async def balances(self, *owners: str) -> list[int]:
        return [await self.adapter.balance(o, self.usdc) for o in owners]

    async def approve(
        self, user: Keypair, session_wallet: str, amount: int, approval_id: str = "ap_1"
    ) -> Any:
        issued = await self.adapter.build_approval(
            approval_id=approval_id,
            user_wallet=str(user.pubkey()),
            session_wallet=session_wallet,
            token=self.usdc,
            amount_base_units=amount,
        )
        return await self.adapter.submit_approval(
            issued=issued,
            user_wallet=str(user.pubkey()),
            session_wallet=session_wallet,
            token=self.usdc,
            amount_base_units=amount,
            signed=wallet_sign(issued, user),
        )


def rpc_spec(url: str, mint: str, *, local: bool = False) -> NetworkSpec:
    info = NetworkInfo(
        name="solana-fake-rpc",
        family=Family.SOLANA,
        chain_id=None,
        environment="test",
        local=local,
        confirmations=1,
    )
    tokens = {"USDC": TokenSpec("USDC", mint, 6, None, None)}
    return NetworkSpec(info=info, rpc_url=url, tokens=tokens, raw={})


@asynccontextmanager
async def open_env(kind: str, state_dir: Path | None = None) -> AsyncIterator[SolanaEnv]:
    if kind == "local":
        adapter = SolanaAdapter.local(get_network("solana-local"), state_dir, fsync=False)
        assert adapter.local_chain is not None
        try:
            yield SolanaEnv(kind, adapter, adapter.local_chain, None, adapter.token("USDC"))
        finally:
            await adapter.close()
        return
    chain = LocalChain(None, tokens={"USDC": 6})
    with FakeSolanaRpc(chain).running() as rpc:
        spec = rpc_spec(rpc.url, chain.mint_address("USDC"))
        adapter = SolanaAdapter.rpc(
            spec, bytes(chain.fee_payer), confirm_timeout_s=5.0, poll_interval_s=0.01
        )
        try:
            yield SolanaEnv(kind, adapter, chain, rpc, adapter.token("USDC"))
        finally:
            await adapter.close()
            chain.close()
