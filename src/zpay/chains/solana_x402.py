"""x402 `exact` on Solana (pure): a versioned transaction the session wallet signs
partially; the resource server's facilitator adds its fee-payer signature and submits it.

The layout `scheme_exact_svm` requires of the client (and its facilitators check):

    0  ComputeBudget SetComputeUnitLimit
    1  ComputeBudget SetComputeUnitPrice   (<= 5 lamports per CU: zpay asks 1 micro-lamport)
    2  SPL Token TransferChecked           session wallet's ATA -> ATA(payTo, mint), amount
    3  Memo                                `extra.memo` when given, else a nonce derived from
                                           the payment's identity (unique per payment)

The fee payer is `extra.feePayer` (the facilitator), never the session wallet, and appears
in no instruction: the session wallet never needs SOL, and the facilitator cannot be made
to move its own funds. The transaction id is the fee payer's signature, which zpay cannot
know; zpay follows the transfer by the session wallet's own signature (`reference`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import transfer_checked
from spl.token.models import TransferCheckedParams

from zpay.chains import solana_tx as stx
from zpay.chains.protocol import ChainError

COMPUTE_UNIT_LIMIT = 20_000  # a TransferChecked and a memo use well under this
COMPUTE_UNIT_PRICE_MICROLAMPORTS = 1
MAX_COMPUTE_UNIT_PRICE_MICROLAMPORTS = 5_000_000  # the spec's bound: 5 lamports per CU
MAX_MEMO_BYTES = 256


class X402FeePayerInvalid(ChainError):
    code = "x402_fee_payer_invalid"


@dataclass(frozen=True)
class SignedExact:
    transaction: VersionedTransaction
    session_signature: Signature  # how zpay finds it on chain (the reference)

    @property
    def wire(self) -> bytes:
        return bytes(self.transaction)


def x402_memo(reference_seed: str, requested: object) -> str:
    """`extra.memo` when the server asks for one (the spec: use it verbatim), else 32 hex
    characters (16 bytes) derived from the payment's identity."""
    if requested is not None:
        if not isinstance(requested, str) or not requested:
            raise ChainError("extra.memo must be a non-empty string", code="x402_memo_invalid")
        if len(requested.encode("utf-8")) > MAX_MEMO_BYTES:
            raise ChainError("extra.memo is longer than 256 bytes", code="x402_memo_invalid")
        return requested
    return hashlib.sha256(b"zpay:x402:" + reference_seed.encode()).hexdigest()[:32]


def build_exact(*, owner: Keypair, fee_payer: Pubkey, pay_to: Pubkey, mint: Pubkey,
                decimals: int, amount_base_units: int, memo: str,
                recent_blockhash: Hash) -> SignedExact:
    stx.check_amount(amount_base_units)
    if fee_payer == owner.pubkey():
        raise X402FeePayerInvalid("the facilitator's fee payer cannot be the session wallet")
    instructions = [
        set_compute_unit_limit(COMPUTE_UNIT_LIMIT),
        set_compute_unit_price(COMPUTE_UNIT_PRICE_MICROLAMPORTS),
        transfer_checked(TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            source=stx.associated_token_address(owner.pubkey(), mint), mint=mint,
            dest=stx.associated_token_address(pay_to, mint), owner=owner.pubkey(),
            amount=amount_base_units, decimals=decimals)),
        Instruction(stx.MEMO_PROGRAM_ID, memo.encode("utf-8"), []),
    ]
    for ix in instructions:
        if any(meta.pubkey == fee_payer for meta in ix.accounts):
            raise X402FeePayerInvalid("the fee payer may appear in no instruction")
    message = MessageV0.try_compile(fee_payer, instructions, [], recent_blockhash)
    signature = owner.sign_message(to_bytes_versioned(message))
    keys = list(message.account_keys)
    signers = keys[:message.header.num_required_signatures]
    if signers != [fee_payer, owner.pubkey()]:
        raise ChainError("unexpected signers in the x402 transaction", code="invalid_payload")
    transaction = VersionedTransaction.populate(message, [Signature.default(), signature])
    return SignedExact(transaction, signature)
