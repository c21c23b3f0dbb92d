"""An x402 `exact` SVM facilitator for tests, on LiteSVM (solana-local).

x402's own SVM facilitator sits behind the package's `svm` extra, which pins
`solana<0.40`; zpay needs `solana>=0.40`, so it cannot be installed beside zpay. This
facilitator applies EVERY check of the spec's "Facilitator Verification Rules (MUST)"
(specs/schemes/exact/scheme_exact_svm.md, coinbase/x402), in order, with x402's reason
codes, and the RECOMMENDED duplicate-settlement cache:

1. instruction layout: 3 to 6 instructions — SetComputeUnitLimit, SetComputeUnitPrice,
   TransferChecked, then only Lighthouse or Memo (the sixth: Memo only); with
   `extra.memo`, exactly one Memo whose data is that value;
2. fee payer safety: the fee payer (account 0, = `extra.feePayer`, one of ours) appears in
   no instruction's accounts, is not the TransferChecked authority, nor its source;
3. compute budget: program ComputeBudget, discriminators 2 and 3, price <= 5 lamports/CU;
4. transfer: program spl-token or token-2022; mint = asset; destination = ATA(payTo, asset)
   under that program;
5. accounts: the source ATA exists; the destination exists (no create-ATA instruction is
   allowed in this layout);
6. amount = `PaymentRequirements.amount` exactly;

plus what any facilitator must: the client's signature verifies over the message, the
blockhash is still valid. Settling co-signs as fee payer and submits to LiteSVM.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from solders.keypair import Keypair
from solders.message import to_bytes_versioned
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from spl.token.instructions import get_associated_token_address

from zpay.chains.solana_local import LocalChain

COMPUTE_BUDGET = Pubkey.from_string("ComputeBudget111111111111111111111111111111")
TOKEN = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022 = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
MEMO = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
LIGHTHOUSE = Pubkey.from_string("L2TExMFKdjpN9kozasaurPirfHy9P8sbXoAN1qA3S95")
MAX_PRICE_MICROLAMPORTS = 5_000_000
DUPLICATE_TTL_S = 120.0


class Invalid(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class SvmFacilitator:
    chain: LocalChain
    fee_payer: Keypair = field(default_factory=Keypair)
    network: str = "solana:zpay-local"
    settling: dict[str, float] = field(default_factory=dict)  # duplicate-settlement cache

    def extra(self) -> dict[str, Any]:
        return {"feePayer": str(self.fee_payer.pubkey())}

    # ------------------------------------------------------------------ verify

    def verify(self, payload: dict[str, Any], requirements: dict[str, Any]) -> dict[str, Any]:
        try:
            payer = self._verify(payload, requirements)
        except Invalid as exc:
            return {"isValid": False, "invalidReason": exc.reason}
        return {"isValid": True, "payer": payer}

    def _verify(self, payload: dict[str, Any], req: dict[str, Any]) -> str:
        accepted = payload.get("accepted", {})
        if accepted.get("scheme") != "exact" or req.get("scheme") != "exact":
            raise Invalid("unsupported_scheme")
        if accepted.get("network") != req.get("network") or req.get("network") != self.network:
            raise Invalid("network_mismatch")
        fee_payer = req.get("extra", {}).get("feePayer")
        if not fee_payer:
            raise Invalid("invalid_exact_svm_payload_missing_fee_payer")
        if fee_payer != str(self.fee_payer.pubkey()):
            raise Invalid("fee_payer_not_managed_by_facilitator")
        try:
            tx = VersionedTransaction.from_bytes(
                base64.b64decode(payload["payload"]["transaction"]))
        except Exception as exc:
            raise Invalid("invalid_exact_svm_payload_transaction_could_not_be_decoded") from exc
        message = tx.message
        keys = list(message.account_keys)
        ixs = list(message.instructions)
        if keys[0] != self.fee_payer.pubkey():
            raise Invalid("invalid_exact_svm_payload_missing_fee_payer")

        # 1. layout
        if not 3 <= len(ixs) <= 6:
            raise Invalid("invalid_exact_svm_payload_transaction_instructions_length")
        program = [keys[ix.program_id_index] for ix in ixs]
        # 3. compute budget
        limit, price = bytes(ixs[0].data), bytes(ixs[1].data)
        if program[0] != COMPUTE_BUDGET or limit[:1] != b"\x02" or len(limit) != 5:
            raise Invalid("invalid_exact_svm_payload_transaction_instructions_compute_limit_"
                          "instruction")
        if program[1] != COMPUTE_BUDGET or price[:1] != b"\x03" or len(price) != 9:
            raise Invalid("invalid_exact_svm_payload_transaction_instructions_compute_price_"
                          "instruction")
        if int.from_bytes(price[1:9], "little") > MAX_PRICE_MICROLAMPORTS:
            raise Invalid("invalid_exact_svm_payload_transaction_instructions_compute_price_"
                          "instruction_too_high")
        for index, prog in enumerate(program[3:], start=3):
            allowed = (MEMO,) if index == 5 else (MEMO, LIGHTHOUSE)
            if prog not in allowed:
                raise Invalid(["invalid_exact_svm_payload_unknown_fourth_instruction",
                               "invalid_exact_svm_payload_unknown_fifth_instruction",
                               "invalid_exact_svm_payload_unknown_sixth_instruction"][index - 3])
        memos = [bytes(ixs[i].data) for i in range(3, len(ixs)) if program[i] == MEMO]
        expected_memo = req.get("extra", {}).get("memo")
        if expected_memo is not None:
            if len(memos) != 1:
                raise Invalid("invalid_exact_svm_payload_memo_count")
            if memos[0] != str(expected_memo).encode("utf-8"):
                raise Invalid("invalid_exact_svm_payload_memo_mismatch")
        # 4. the transfer
        transfer = ixs[2]
        data = bytes(transfer.data)
        if program[2] not in (TOKEN, TOKEN_2022) or data[:1] != b"\x0c" or len(data) != 10 \
                or len(transfer.accounts) < 4:
            raise Invalid("invalid_exact_svm_payload_no_transfer_instruction")
        source, mint, dest, authority = (keys[i] for i in bytes(transfer.accounts)[:4])
        # 2. fee payer safety
        for ix in ixs:
            if any(keys[i] == self.fee_payer.pubkey() for i in bytes(ix.accounts)):
                raise Invalid("invalid_exact_svm_payload_transaction_fee_payer_included_in_"
                              "instruction_accounts")
        if self.fee_payer.pubkey() in (authority, source):
            raise Invalid("invalid_exact_svm_payload_transaction_fee_payer_transferring_funds")
        if str(mint) != req["asset"]:
            raise Invalid("invalid_exact_svm_payload_mint_mismatch")
        expected_dest = get_associated_token_address(Pubkey.from_string(req["payTo"]), mint,
                                                     program[2])
        if dest != expected_dest:
            raise Invalid("invalid_exact_svm_payload_recipient_mismatch")
        # 5. accounts exist (no create-ATA instruction can be in this layout)
        if self.chain.get_account(source) is None:
            raise Invalid("invalid_exact_svm_payload_source_account_missing")
        if self.chain.get_account(dest) is None:
            raise Invalid("invalid_exact_svm_payload_destination_account_missing")
        # 6. amount, exactly
        if int.from_bytes(data[1:9], "little") != int(req["amount"]):
            raise Invalid("invalid_exact_svm_payload_amount_mismatch")
        # The client signed THIS message; its blockhash can still land.
        signers = keys[:message.header.num_required_signatures]
        signed = to_bytes_versioned(message)
        for signer, signature in zip(signers[1:], tx.signatures[1:], strict=True):
            if not signature.verify(signer, signed):
                raise Invalid("invalid_exact_svm_payload_signature")
        if authority not in signers[1:]:
            raise Invalid("invalid_exact_svm_payload_signature")
        if not self.chain.is_blockhash_valid(message.recent_blockhash):
            raise Invalid("invalid_exact_svm_payload_blockhash_expired")
        return str(authority)

    # ------------------------------------------------------------------ settle

    def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> dict[str, Any]:
        network = requirements.get("network")
        verified = self.verify(payload, requirements)
        if not verified["isValid"]:
            return {"success": False, "errorReason": verified["invalidReason"],
                    "transaction": "", "network": network}
        wire = payload["payload"]["transaction"]
        now = time.monotonic()
        self.settling = {k: t for k, t in self.settling.items() if now - t < DUPLICATE_TTL_S}
        if wire in self.settling:
            return {"success": False, "errorReason": "duplicate_settlement", "transaction": "",
                    "network": network}
        self.settling[wire] = now
        tx = VersionedTransaction.from_bytes(base64.b64decode(wire))
        fee_signature = self.fee_payer.sign_message(to_bytes_versioned(tx.message))
        signed = VersionedTransaction.populate(tx.message, [fee_signature,
                                                            *tx.signatures[1:]])
        self.chain.process(signed)  # type: ignore[arg-type]  # LiteSVM takes either form
        return {"success": True, "transaction": str(fee_signature), "network": network,
                "payer": verified["payer"]}
