"""The pure Solana builders and checkers: no chain involved."""

from __future__ import annotations

import struct

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_status import (
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
    TransactionErrorInsufficientFundsForRent,
    TransactionErrorType,
)
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID

from zpay.chains import solana_tx as stx
from zpay.chains.protocol import (
    ApprovalMismatch,
    ApprovalSignatureInvalid,
    ChainError,
    InvalidAddress,
)
from zpay.chains.solana_tx import Refusal

# Fixed seeds: parametrized ids must be the same in every pytest-xdist worker.
FEE_PAYER, USER, SESSION = (Keypair.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
MINT = Keypair.from_seed(bytes([4]) * 32).pubkey()
BLOCKHASH = Hash.new_unique()


def _message(amount: int = 5_000_000, approval_id: str = "ap_1", user: Keypair = USER) -> bytes:
    return bytes(
        stx.build_approval_message(
            fee_payer=FEE_PAYER.pubkey(),
            user_wallet=user.pubkey(),
            session_wallet=SESSION.pubkey(),
            mint=MINT,
            decimals=6,
            amount_base_units=amount,
            recent_blockhash=BLOCKHASH,
            approval_id=approval_id,
        )
    )


def _signed(message: bytes, signer: Keypair) -> bytes:
    tx = Transaction.new_unsigned(Transaction.from_bytes(_wire(message)).message)
    signatures = list(tx.signatures)
    signatures[1] = signer.sign_message(message)
    return bytes(Transaction.populate(tx.message, signatures))


def _wire(message: bytes) -> bytes:
    return bytes([2]) + bytes(128) + message


def test_approval_message_is_deterministic_and_has_the_documented_shape() -> None:
    raw = _message()
    assert raw == _message()
    assert raw != _message(amount=5_000_001)
    assert raw != _message(approval_id="ap_2")
    tx = Transaction.from_bytes(_wire(raw))
    keys = tx.message.account_keys
    assert keys[0] == FEE_PAYER.pubkey() and keys[1] == USER.pubkey()
    assert tx.message.header.num_required_signatures == 2
    programs = [keys[ix.program_id_index] for ix in tx.message.instructions]
    assert programs == [ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, stx.MEMO_PROGRAM_ID]
    transfer = bytes(tx.message.instructions[1].data)
    assert transfer[0] == 12  # transfer_checked
    assert struct.unpack_from("<QB", transfer, 1) == (5_000_000, 6)
    assert bytes(tx.message.instructions[2].data) == b"zpay approval ap_1"


@pytest.mark.parametrize("approval_id", ["", "x" * 129, "é", "a\nb"])
def test_approval_ids_must_be_short_printable_ascii(approval_id: str) -> None:
    with pytest.raises(ChainError) as err:
        _message(approval_id=approval_id)
    assert err.value.code == "invalid_approval_id"


def test_check_signed_approval_accepts_the_issued_message_signed_by_the_user() -> None:
    raw = _message()
    tx = stx.check_signed_approval(
        issued_message=raw, signed_transaction=_signed(raw, USER), user_wallet=USER.pubkey()
    )
    cosigned = stx.cosign_as_fee_payer(tx, FEE_PAYER)
    cosigned.verify()  # every signature valid
    assert cosigned.signatures[0] == FEE_PAYER.sign_message(raw)


def test_check_signed_approval_refusals() -> None:
    raw = _message()
    other = _message(amount=6_000_000)
    with pytest.raises(ApprovalMismatch):
        stx.check_signed_approval(
            issued_message=raw, signed_transaction=_signed(other, USER), user_wallet=USER.pubkey()
        )
    with pytest.raises(ApprovalSignatureInvalid):
        stx.check_signed_approval(
            issued_message=raw,
            signed_transaction=_signed(raw, Keypair()),
            user_wallet=USER.pubkey(),
        )
    with pytest.raises(ApprovalSignatureInvalid):
        stx.check_signed_approval(
            issued_message=raw, signed_transaction=_wire(raw), user_wallet=USER.pubkey()
        )
    # a user who is not a signer of the issued message
    with pytest.raises(ApprovalMismatch):
        stx.check_signed_approval(
            issued_message=raw,
            signed_transaction=_signed(raw, USER),
            user_wallet=Keypair().pubkey(),
        )
    # one signature missing, or bytes appended
    with pytest.raises(ApprovalMismatch):
        stx.check_signed_approval(
            issued_message=raw,
            signed_transaction=bytes([1]) + bytes(64) + raw,
            user_wallet=USER.pubkey(),
        )
    with pytest.raises(ApprovalMismatch):
        stx.check_signed_approval(
            issued_message=raw,
            signed_transaction=_signed(raw, USER) + b"\x00",
            user_wallet=USER.pubkey(),
        )
    for garbage in (b"", b"\x80", b"\x02" + bytes(10)):
        with pytest.raises(ApprovalMismatch):
            stx.check_signed_approval(
                issued_message=raw, signed_transaction=garbage, user_wallet=USER.pubkey()
            )


def test_cosign_refuses_a_message_with_another_fee_payer() -> None:
    raw = _message()
    tx = Transaction.from_bytes(_signed(raw, USER))
    with pytest.raises(ApprovalMismatch):
        stx.cosign_as_fee_payer(tx, Keypair())


def test_transfer_is_fully_signed_and_unique_per_seed() -> None:
    def build(seed: str) -> Transaction:
        return stx.build_transfer(
            fee_payer=FEE_PAYER,
            owner=SESSION,
            destination_owner=USER.pubkey(),
            mint=MINT,
            decimals=6,
            amount_base_units=1,
            recent_blockhash=BLOCKHASH,
            reference_seed=seed,
        )

    first = build("pay_1")
    first.verify()
    assert first.message.account_keys[0] == FEE_PAYER.pubkey()
    assert first.signatures[0] == build("pay_1").signatures[0]
    assert first.signatures[0] != build("pay_2").signatures[0]
    memo = bytes(first.message.instructions[2].data)
    assert memo.startswith(b"zpay payment ") and b"pay_1" not in memo


def test_sweep_transfers_then_closes_and_skips_the_transfer_when_empty() -> None:
    def build(amount: int) -> Transaction:
        return stx.build_sweep(
            fee_payer=FEE_PAYER,
            owner=SESSION,
            destination_owner=USER.pubkey(),
            mint=MINT,
            decimals=6,
            amount_base_units=amount,
            recent_blockhash=BLOCKHASH,
        )

    full = build(42)
    full.verify()
    assert [bytes(ix.data)[:1] for ix in full.message.instructions][1:] == [b"\x0c", b"\x09"]
    empty = build(0)
    assert [bytes(ix.data)[:1] for ix in empty.message.instructions] == [b"\x09"]  # close only


def test_fee_payer_cannot_be_a_party() -> None:
    with pytest.raises(ChainError):
        stx.build_transfer(
            fee_payer=FEE_PAYER,
            owner=FEE_PAYER,
            destination_owner=USER.pubkey(),
            mint=MINT,
            decimals=6,
            amount_base_units=1,
            recent_blockhash=BLOCKHASH,
            reference_seed="p",
        )
    with pytest.raises(ChainError):
        _message(user=FEE_PAYER)


@pytest.mark.parametrize("amount", [0, -5, 2**64, True, 1.0])
def test_check_amount(amount: object) -> None:
    with pytest.raises(ChainError) as err:
        stx.check_amount(amount)  # type: ignore[arg-type]
    assert err.value.code == "invalid_amount"
    assert stx.check_amount(2**64 - 1) == 2**64 - 1


@pytest.mark.parametrize("text", ["", " " + str(USER.pubkey()), "0" * 44, "x", 123, None, "1" * 33])
def test_parse_pubkey_refuses(text: object) -> None:
    with pytest.raises(InvalidAddress):
        stx.parse_pubkey(text)


def test_parse_pubkey_accepts_the_system_program_and_round_trips() -> None:
    assert stx.parse_pubkey("11111111111111111111111111111111") == Pubkey.default()
    assert str(stx.parse_pubkey(str(USER.pubkey()))) == str(USER.pubkey())


def test_keypair_from_secret() -> None:
    secret = bytes(USER)
    assert stx.keypair_from_secret(secret, expected_address=str(USER.pubkey())) == USER
    with pytest.raises(ChainError) as err:
        stx.keypair_from_secret(secret, expected_address=str(SESSION.pubkey()))
    assert err.value.code == "wallet_mismatch" and secret.hex() not in str(err.value)
    tampered = secret[:32] + bytes(SESSION.pubkey())
    with pytest.raises(ChainError) as err:
        stx.keypair_from_secret(tampered)
    assert err.value.code == "invalid_wallet_secret"
    assert err.value.__cause__ is None


def test_parse_token_account() -> None:
    data = bytes(MINT) + bytes(USER.pubkey()) + (123).to_bytes(8, "little") + bytes(93)
    state = stx.parse_token_account(data, program_owner=TOKEN_PROGRAM_ID)
    assert state == stx.TokenAccountState(MINT, USER.pubkey(), 123)
    assert stx.parse_token_account(data, program_owner=Pubkey.default()) is None
    assert stx.parse_token_account(data[:100], program_owner=TOKEN_PROGRAM_ID) is None


@pytest.mark.parametrize(
    ("err", "refusal"),
    [
        (TransactionErrorFieldless.AlreadyProcessed, Refusal.ALREADY_PROCESSED),
        (TransactionErrorFieldless.BlockhashNotFound, Refusal.BLOCKHASH_NOT_FOUND),
        (TransactionErrorFieldless.InsufficientFundsForFee, Refusal.FEE_PAYER_UNFUNDED),
        (TransactionErrorFieldless.AccountNotFound, Refusal.FEE_PAYER_UNFUNDED),
        (TransactionErrorInsufficientFundsForRent(0), Refusal.FEE_PAYER_UNFUNDED),
        (TransactionErrorFieldless.SignatureFailure, Refusal.SIGNATURE_INVALID),
        (
            TransactionErrorInstructionError(1, InstructionErrorCustom(1)),
            Refusal.INSUFFICIENT_TOKENS,
        ),
        (
            TransactionErrorInstructionError(1, InstructionErrorFieldless.UninitializedAccount),
            Refusal.INSUFFICIENT_TOKENS,
        ),
        (TransactionErrorInstructionError(1, InstructionErrorCustom(17)), Refusal.REJECTED),
        (
            TransactionErrorInstructionError(0, InstructionErrorCustom(1)),
            Refusal.FEE_PAYER_UNFUNDED,
        ),
        (TransactionErrorInstructionError(2, InstructionErrorCustom(1)), Refusal.REJECTED),
        (None, Refusal.REJECTED),
    ],
)
def test_classify_error(err: TransactionErrorType | None, refusal: Refusal) -> None:
    assert stx.classify_error(err) is refusal
    assert stx.describe_error(err)


def test_describe_error_is_readable() -> None:
    err = TransactionErrorInstructionError(1, InstructionErrorCustom(1))
    assert stx.describe_error(err) == "instruction 1: insufficient funds"
    assert stx.describe_error(TransactionErrorFieldless.BlockhashNotFound) == "BlockhashNotFound"


def test_split_wire_transaction_keeps_the_exact_message_bytes() -> None:
    raw = _message()
    signatures, message = stx.split_wire_transaction(_signed(raw, USER))
    assert message == raw
    assert signatures[1] == bytes(USER.sign_message(raw))
    assert Signature.from_bytes(signatures[0]) == Signature.default()
