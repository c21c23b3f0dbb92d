"""The wallet helpers sign exactly what zpay's chain code accepts (checked without a chain)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from zpay.chains import evm_tx
from zpay.client import EvmWallet, SolanaWallet, WalletError, load_wallet
from zpay.client.types import Approval


def _domain() -> evm_tx.TokenDomain:
    return evm_tx.TokenDomain("Zpay Test USD", "2", 31337,
                              "0x5FbDB2315678afecb367f032d93F642f64180aa3")


def test_evm_typed_data_signature_is_accepted_by_the_chain_check() -> None:
    user, session = EvmWallet.generate(), EvmWallet.generate()
    auth = evm_tx.Authorization(user.address, session.address, 12_500_000, 0, 2**40,
                                evm_tx.approval_nonce("apr_1"))
    typed = evm_tx.typed_data(_domain(), auth)
    approval = Approval.from_json({"id": "apr_1", "kind": "funding", "status": "pending",
                                   "format": "eip712", "typed_data": typed})
    signed = user.sign_approval(approval)
    assert set(signed) == {"signature"}
    evm_tx.check_signed_authorization(domain=_domain(), issued=auth, user_wallet=user.address,
                                      signature=signed["signature"], claimed_typed_data=None,
                                      now_s=None)
    with pytest.raises(evm_tx.ApprovalSignatureInvalid):  # someone else's signature
        evm_tx.check_signed_authorization(
            domain=_domain(), issued=auth, user_wallet=user.address,
            signature=session.sign_approval(approval)["signature"], claimed_typed_data=None,
            now_s=None)


def test_evm_transaction_fallback_is_accepted_by_the_chain_check() -> None:
    user, session = EvmWallet.generate(), EvmWallet.generate()
    issued = evm_tx.build_funding_transaction(
        chain_id=31337, token_address=_domain().verifying_contract, user_wallet=user.address,
        session_wallet=session.address, amount_base_units=5_000_000, nonce=3,
        max_fee_per_gas=2 * 10**9, max_priority_fee_per_gas=10**9)
    signed = user.sign_approval({"unsigned_transaction": issued.to_json()})
    checked = evm_tx.check_signed_funding_transaction(
        signed_transaction=signed["signed_transaction"], issued=issued, user_wallet=user.address)
    assert checked.nonce == 3
    with pytest.raises(WalletError):  # a wallet refuses to sign another account's transaction
        session.sign_approval({"unsigned_transaction": issued.to_json()})


def test_solana_wallet_signs_its_slot_only(tmp_path: Path) -> None:
    fee_payer, user = Keypair(), SolanaWallet.generate()
    ix = transfer(TransferParams(from_pubkey=user.keypair.pubkey(),
                                 to_pubkey=Keypair().pubkey(), lamports=1))
    message = Message.new_with_blockhash([ix], fee_payer.pubkey(), Hash.default())
    issued = {"approval_transaction":
              base64.b64encode(bytes(Transaction.new_unsigned(message))).decode()}
    signed = Transaction.from_bytes(base64.b64decode(user.sign_approval(issued)
                                                     ["signed_transaction"]))
    assert signed.signatures[1] == user.keypair.sign_message(bytes(message))
    assert signed.signatures[0] == Transaction.new_unsigned(message).signatures[0]  # unsigned
    with pytest.raises(WalletError):
        SolanaWallet.generate().sign_approval(issued)

    path = tmp_path / "id.json"
    user.to_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = load_wallet(path)
    assert isinstance(loaded, SolanaWallet) and loaded.address == user.address


def test_load_wallet_tells_the_families_apart(tmp_path: Path) -> None:
    evm = EvmWallet.generate()
    evm.to_file(tmp_path / "evm.key")
    loaded = load_wallet(tmp_path / "evm.key")
    assert isinstance(loaded, EvmWallet) and loaded.address == evm.address
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(WalletError):
        load_wallet(tmp_path / "junk")
    with pytest.raises(WalletError):
        evm.sign_approval({"approval_transaction": "AA=="})
