"""Pure builders and checkers for Solana transactions (no network I/O).

Every transaction zpay sends has the platform fee payer at account index 0, so session
wallets and users never need SOL. The shapes are fixed so that errors can be attributed
to an instruction by index:

    approval: [create session ATA (idempotent), transfer_checked user -> session, memo]
    transfer: [create recipient ATA (idempotent), transfer_checked session -> recipient, memo]
    sweep:    [create user ATA (idempotent), transfer_checked session -> user, close session ATA]
    faucet:   [create owner ATA (idempotent), mint_to_checked, memo]

The memo makes each approval / payment / faucet transaction unique: two transactions with
the same instructions and the same recent blockhash would have the same signature and the
second would be silently deduplicated by the chain.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import struct
from dataclasses import dataclass

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction
from solders.transaction_status import (
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
    TransactionErrorInsufficientFundsForRent,
    TransactionErrorType,
)
from spl.token.constants import (
    ACCOUNT_LEN,
    ASSOCIATED_TOKEN_PROGRAM_ID,
    MINT_LEN,
    TOKEN_PROGRAM_ID,
)
from spl.token.instructions import (
    create_idempotent_associated_token_account,
    get_associated_token_address,
    initialize_mint2,
    mint_to_checked,
)
from spl.token.models import (
    InitializeMint2Params,
    MintToCheckedParams,
)

from zpay.chains.protocol import (
    ApprovalMismatch,
    ApprovalSignatureInvalid,
    ChainError,
    InvalidAddress,
)

__all__ = [
    "MEMO_PROGRAM_ID",
    "TOKEN_INSTRUCTION_INDEX",
    "U64_MAX",
    "Refusal",
    "TokenAccountState",
    "associated_token_address",
    "b64decode_strict",
    "b64encode",
    "build_approval_message",
    "build_create_mint",
    "build_faucet_mint",
    "build_sweep",
    "build_transfer",
    "check_amount",
    "check_signed_approval",
    "classify_error",
    "cosign_as_fee_payer",
    "describe_error",
    "keypair_from_secret",
    "parse_pubkey",
    "parse_token_account",
    "payment_memo",
    "split_wire_transaction",
]

MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
U64_MAX = 2**64 - 1
# Index of the instruction that moves tokens in every shape above; errors raised by it are
# the source wallet's fault (no funds / no token account), errors elsewhere are not.
TOKEN_INSTRUCTION_INDEX = 1
_ATA_INSTRUCTION_INDEX = 0
_APPROVAL_ID_MAX_LEN = 128
_SPL_TOKEN_INSUFFICIENT_FUNDS = 1
_SYSTEM_INSUFFICIENT_LAMPORTS = 1  # SystemError::ResultWithNegativeLamports, raised in ATA CPI
_SPL_TOKEN_ERRORS = {
    0: "account not rent exempt",
    1: "insufficient funds",
    2: "invalid mint",
    3: "account not associated with this mint",
    4: "owner does not match",
    9: "state is uninitialized",
    17: "account is frozen",
    18: "the mint decimals do not match",
}


# --------------------------------------------------------------------------- encoding


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: object) -> bytes:
    """Base64 that refuses anything but canonical characters; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc


def parse_pubkey(address: object) -> Pubkey:
    """A base58 32-byte public key, exactly as written (no trimming)."""
    if not isinstance(address, str) or not 32 <= len(address) <= 44:
        raise InvalidAddress(f"not a Solana address: {address!r}")
    try:
        key = Pubkey.from_string(address)
    except ValueError:
        raise InvalidAddress(f"not a Solana address: {address!r}") from None
    # base58 has no canonical-form ambiguity except leading '1's, which from_string
    # already maps 1:1 to leading zero bytes; re-encoding catches anything else.
    if str(key) != address:
        raise InvalidAddress(f"not a canonical Solana address: {address!r}")
    return key


def keypair_from_secret(secret: bytes | bytearray, *,
                        expected_address: str | None = None) -> Keypair:
    """The 64-byte keypair secret of a wallet. Error messages never include key material."""
    if not isinstance(secret, bytes | bytearray) or len(secret) != 64:
        raise ChainError("wallet secret must be 64 bytes", code="invalid_wallet_secret")
    raw = bytes(secret)
    try:
        keypair = Keypair.from_bytes(raw)
    except ValueError:
        # `from None`: the library error is generic but must not drag the secret along.
        raise ChainError(
            "wallet secret is not a valid keypair", code="invalid_wallet_secret"
        ) from None
    # from_bytes refuses a secret whose public half is not the one its private half derives
    # (pinned by the tests), so the trailing 32 bytes ARE the public key: reading them
    # spares `keypair.pubkey()`, which derives it again (~25 µs).
    if expected_address is not None and str(Pubkey.from_bytes(raw[32:])) != expected_address:
        raise ChainError(
            f"wallet secret does not belong to {expected_address}", code="wallet_mismatch"
        )
    return keypair


def check_amount(amount_base_units: int, *, max_base_units: int = U64_MAX) -> int:
    # bool is an int subclass; True must never mean "1 base unit".
    if isinstance(amount_base_units, bool) or not isinstance(amount_base_units, int):
        raise ChainError("amount must be an integer in base units", code="invalid_amount")
    if not 0 < amount_base_units <= min(max_base_units, U64_MAX):
        raise ChainError(
            f"amount {amount_base_units} is out of range (1..{min(max_base_units, U64_MAX)})",
            code="invalid_amount",
        )
    return amount_base_units


@functools.lru_cache(maxsize=65536)
def associated_token_address(owner: Pubkey, mint: Pubkey) -> Pubkey:
    # A program-derived address: a search of SHA-256 bumps, the same answer every time.
    return get_associated_token_address(owner, mint, TOKEN_PROGRAM_ID)


# Programs a payment can never be meant for (tokens sent to them are lost).
RESERVED_PROGRAMS: tuple[Pubkey, ...] = (SYSTEM_PROGRAM_ID, TOKEN_PROGRAM_ID,
                                         ASSOCIATED_TOKEN_PROGRAM_ID)


@dataclass(frozen=True)
class TokenAccountState:
    mint: Pubkey
    owner: Pubkey
    amount: int


def parse_token_account(data: bytes, *, program_owner: Pubkey) -> TokenAccountState | None:
    """SPL token account layout: mint(32) owner(32) amount(u64 LE) ...; None if not one."""
    if program_owner != TOKEN_PROGRAM_ID or len(data) < ACCOUNT_LEN:
        return None
    return TokenAccountState(
        mint=Pubkey.from_bytes(data[0:32]),
        owner=Pubkey.from_bytes(data[32:64]),
        amount=int.from_bytes(data[64:72], "little"),
    )


# The token instructions of every payment, built directly: spl.token.instructions encodes
# through `construct` and searches the ATA address again on every call (~60 µs a payment).
# Their layouts are pinned byte for byte against the spl builders by
# tests/chains/test_solana_tx_builders.py.
_TRANSFER_CHECKED = struct.Struct("<BQB")  # tag 12, amount u64 LE, decimals u8
_TRANSFER_CHECKED_TAG = 12
_CLOSE_ACCOUNT_DATA = b"\x09"
_ATA_CREATE_IDEMPOTENT_DATA = b"\x01"
_SYSTEM_PROGRAM_META = AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False)
_TOKEN_PROGRAM_META = AccountMeta(TOKEN_PROGRAM_ID, is_signer=False, is_writable=False)


def _create_ata_idempotent(funder: Pubkey, wallet: Pubkey, mint: Pubkey) -> Instruction:
    return Instruction(
        ASSOCIATED_TOKEN_PROGRAM_ID,
        _ATA_CREATE_IDEMPOTENT_DATA,
        [
            AccountMeta(funder, is_signer=True, is_writable=True),
            AccountMeta(associated_token_address(wallet, mint), is_signer=False, is_writable=True),
            AccountMeta(wallet, is_signer=False, is_writable=False),
            AccountMeta(mint, is_signer=False, is_writable=False),
            _SYSTEM_PROGRAM_META,
            _TOKEN_PROGRAM_META,
        ],
    )


def _transfer_checked(
    *, source: Pubkey, mint: Pubkey, dest: Pubkey, owner: Pubkey, amount: int, decimals: int
) -> Instruction:
    return Instruction(
        TOKEN_PROGRAM_ID,
        _TRANSFER_CHECKED.pack(_TRANSFER_CHECKED_TAG, amount, decimals),
        [
            AccountMeta(source, is_signer=False, is_writable=True),
            AccountMeta(mint, is_signer=False, is_writable=False),
            AccountMeta(dest, is_signer=False, is_writable=True),
            AccountMeta(owner, is_signer=True, is_writable=False),
        ],
    )


def _token_payment(*, funder: Pubkey, owner: Pubkey, destination_owner: Pubkey, mint: Pubkey,
                   amount: int, decimals: int, memo: str) -> list[Instruction]:
    """`amount` of `mint` from `owner`'s token account to `destination_owner`'s (created
    by `funder` if missing), with a memo: an approval's and a payment's instructions."""
    return [
        _create_ata_idempotent(funder, destination_owner, mint),
        _transfer_checked(
            source=associated_token_address(owner, mint),
            mint=mint,
            dest=associated_token_address(destination_owner, mint),
            owner=owner,
            amount=amount,
            decimals=decimals,
        ),
        _memo(memo),
    ]


def _close_account(*, account: Pubkey, dest: Pubkey, owner: Pubkey) -> Instruction:
    return Instruction(
        TOKEN_PROGRAM_ID,
        _CLOSE_ACCOUNT_DATA,
        [
            AccountMeta(account, is_signer=False, is_writable=True),
            AccountMeta(dest, is_signer=False, is_writable=True),
            AccountMeta(owner, is_signer=True, is_writable=False),
        ],
    )


def _signed_by_fee_payer_and_owner(
    message: Message, fee_payer: Keypair, owner: Keypair
) -> Transaction:
    """What `Transaction([fee_payer, owner], message, ...)` gives, ~130 µs cheaper: that
    constructor finds each signer's slot by deriving its public key, repeatedly. In these
    shapes the slots are fixed: the fee payer first, the owner (the only other signer,
    checked distinct from it) second."""
    raw = bytes(message)
    return Transaction.populate(message, [fee_payer.sign_message(raw), owner.sign_message(raw)])


def _memo(text: str) -> Instruction:
    # No signer accounts: the memo only has to make the message unique and readable in a
    # wallet, it does not need to attest anything.
    return Instruction(MEMO_PROGRAM_ID, text.encode("utf-8"), [])


def payment_memo(reference_seed: str) -> str:
    # A digest rather than the seed itself: seeds are internal identifiers of unknown
    # length and content, and the chain is public. 128 bits is plenty for uniqueness.
    digest = hashlib.sha256(reference_seed.encode("utf-8")).hexdigest()[:32]
    return f"zpay payment {digest}"


def _approval_memo(approval_id: str) -> str:
    if (
        not approval_id
        or len(approval_id) > _APPROVAL_ID_MAX_LEN
        or not approval_id.isascii()
        or not approval_id.isprintable()
    ):
        raise ChainError(
            "approval_id must be 1-128 printable ASCII characters", code="invalid_approval_id"
        )
    return f"zpay approval {approval_id}"


# --------------------------------------------------------------------------- approvals


def build_approval_message(
    *,
    fee_payer: Pubkey,
    user_wallet: Pubkey,
    session_wallet: Pubkey,
    mint: Pubkey,
    decimals: int,
    amount_base_units: int,
    recent_blockhash: Hash,
    approval_id: str,
) -> Message:
    """The exact message the user signs. Deterministic: the same inputs give the same bytes,
    which is what lets `submit_approval` rebuild and compare it."""
    check_amount(amount_base_units)
    if user_wallet == fee_payer or session_wallet == fee_payer:
        raise ChainError(
            "the platform fee payer cannot be a party to an approval", code="invalid_wallet"
        )
    instructions = _token_payment(
        funder=fee_payer, owner=user_wallet, destination_owner=session_wallet, mint=mint,
        amount=amount_base_units, decimals=decimals, memo=_approval_memo(approval_id))
    return Message.new_with_blockhash(instructions, fee_payer, recent_blockhash)


def _read_short_vec_len(raw: bytes) -> tuple[int, int]:
    """Solana's compact-u16: (value, bytes consumed)."""
    value = 0
    for i in range(3):
        if i >= len(raw):
            raise ValueError("truncated length prefix")
        byte = raw[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ValueError("length prefix too long")


def split_wire_transaction(raw: bytes) -> tuple[list[bytes], bytes]:
    """(signatures, message bytes) of a wire-format transaction, without re-serialising:
    the message is compared byte for byte, so it must be the bytes the wallet returned."""
    count, offset = _read_short_vec_len(raw)
    end = offset + 64 * count
    if count == 0 or len(raw) <= end:
        raise ValueError("truncated transaction")
    signatures = [raw[offset + 64 * i : offset + 64 * (i + 1)] for i in range(count)]
    return signatures, raw[end:]


def check_signed_approval(
    *, issued_message: bytes, signed_transaction: bytes, user_wallet: Pubkey
) -> Transaction:
    """The user's signed transaction, if and only if its message is byte-identical to the
    issued one and carries a valid signature of `user_wallet`.

    Raises ApprovalMismatch (anything else was signed) or ApprovalSignatureInvalid.
    The fee payer slot is not checked: zpay fills it after these checks.
    """
    try:
        signatures, message_bytes = split_wire_transaction(signed_transaction)
    except ValueError:
        raise ApprovalMismatch("the signed approval is not a Solana transaction") from None
    if message_bytes != issued_message:
        raise ApprovalMismatch("the signed transaction is not the approval zpay issued")
    try:
        transaction = Transaction.from_bytes(signed_transaction)
    except ValueError:
        raise ApprovalMismatch("the signed approval is not a Solana transaction") from None
    message = transaction.message
    required = message.header.num_required_signatures
    if len(signatures) != required:
        raise ApprovalMismatch("the signed approval has the wrong number of signatures")
    signers = list(message.account_keys[:required])
    if user_wallet not in signers:
        raise ApprovalMismatch(f"the approval is not for wallet {user_wallet}")
    signature = Signature.from_bytes(signatures[signers.index(user_wallet)])
    if not signature.verify(user_wallet, message_bytes):
        raise ApprovalSignatureInvalid(f"the approval is not signed by {user_wallet}")
    return transaction


def cosign_as_fee_payer(transaction: Transaction, fee_payer: Keypair) -> Transaction:
    message = transaction.message
    if not message.account_keys or message.account_keys[0] != fee_payer.pubkey():
        raise ApprovalMismatch("the approval does not name the platform fee payer")
    signatures = list(transaction.signatures)
    signatures[0] = fee_payer.sign_message(bytes(message))
    return Transaction.populate(message, signatures)


# --------------------------------------------------------------------------- spending


def build_transfer(
    *,
    fee_payer: Keypair,
    owner: Keypair,
    destination_owner: Pubkey,
    mint: Pubkey,
    decimals: int,
    amount_base_units: int,
    recent_blockhash: Hash,
    reference_seed: str,
    fee_payer_pubkey: Pubkey | None = None,
    owner_pubkey: Pubkey | None = None,
) -> Transaction:
    """A payment from `owner`'s token account, fully signed (fee payer first, so
    `signatures[0]` is the transaction id).

    `fee_payer_pubkey` / `owner_pubkey`: the keypairs' public keys when the caller already
    holds them (deriving one costs ~25 µs). They must be the keypairs' own: nothing here
    re-derives them to check, and a wrong one gives a transaction the chain refuses."""
    check_amount(amount_base_units)
    payer = fee_payer.pubkey() if fee_payer_pubkey is None else fee_payer_pubkey
    source_owner = owner.pubkey() if owner_pubkey is None else owner_pubkey
    if source_owner == payer:
        raise ChainError("the platform fee payer cannot pay from itself", code="invalid_wallet")
    instructions = _token_payment(
        funder=payer, owner=source_owner, destination_owner=destination_owner, mint=mint,
        amount=amount_base_units, decimals=decimals, memo=payment_memo(reference_seed))
    message = Message.new_with_blockhash(instructions, payer, recent_blockhash)
    return _signed_by_fee_payer_and_owner(message, fee_payer, owner)


def build_sweep(
    *,
    fee_payer: Keypair,
    owner: Keypair,
    destination_owner: Pubkey,
    mint: Pubkey,
    decimals: int,
    amount_base_units: int,
    recent_blockhash: Hash,
    fee_payer_pubkey: Pubkey | None = None,
    owner_pubkey: Pubkey | None = None,
) -> Transaction:
    """Move `amount_base_units` (the whole balance) back, then close the token account.

    Closing fails on-chain if the balance is not exactly zero afterwards, so a sweep built
    from a stale balance can never leave funds behind in a closed account; the rent goes
    back to the fee payer, who paid it when the approval created the account.
    `fee_payer_pubkey` / `owner_pubkey` as in `build_transfer`.
    """
    payer = fee_payer.pubkey() if fee_payer_pubkey is None else fee_payer_pubkey
    source_owner = owner.pubkey() if owner_pubkey is None else owner_pubkey
    if source_owner == payer:
        raise ChainError("the platform fee payer cannot sweep itself", code="invalid_wallet")
    source = associated_token_address(source_owner, mint)
    instructions: list[Instruction] = []
    if amount_base_units > 0:
        # Only when there is something to return: creating an empty account for the user
        # would cost the platform rent for nothing.
        instructions.append(_create_ata_idempotent(payer, destination_owner, mint))
        instructions.append(
            _transfer_checked(
                source=source,
                mint=mint,
                dest=associated_token_address(destination_owner, mint),
                owner=source_owner,
                amount=check_amount(amount_base_units),
                decimals=decimals,
            )
        )
    instructions.append(_close_account(account=source, dest=payer, owner=source_owner))
    message = Message.new_with_blockhash(instructions, payer, recent_blockhash)
    return _signed_by_fee_payer_and_owner(message, fee_payer, owner)


# --------------------------------------------------------------------------- local network


def build_create_mint(
    *,
    fee_payer: Keypair,
    mint: Keypair,
    mint_authority: Pubkey,
    decimals: int,
    rent_lamports: int,
    recent_blockhash: Hash,
) -> Transaction:
    instructions = [
        create_account(
            CreateAccountParams(
                from_pubkey=fee_payer.pubkey(),
                to_pubkey=mint.pubkey(),
                lamports=rent_lamports,
                space=MINT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        initialize_mint2(
            InitializeMint2Params(
                decimals=decimals,
                program_id=TOKEN_PROGRAM_ID,
                mint=mint.pubkey(),
                mint_authority=mint_authority,
            )
        ),
    ]
    message = Message.new_with_blockhash(instructions, fee_payer.pubkey(), recent_blockhash)
    return Transaction([fee_payer, mint], message, recent_blockhash)


def build_faucet_mint(
    *,
    fee_payer: Keypair,
    mint_authority: Keypair,
    owner: Pubkey,
    mint: Pubkey,
    decimals: int,
    amount_base_units: int,
    recent_blockhash: Hash,
    nonce: str,
) -> Transaction:
    check_amount(amount_base_units)
    instructions = [
        create_idempotent_associated_token_account(
            fee_payer.pubkey(), owner, mint, TOKEN_PROGRAM_ID
        ),
        mint_to_checked(
            MintToCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                mint=mint,
                dest=associated_token_address(owner, mint),
                mint_authority=mint_authority.pubkey(),
                amount=amount_base_units,
                decimals=decimals,
            )
        ),
        _memo(f"zpay faucet {nonce}"),
    ]
    message = Message.new_with_blockhash(instructions, fee_payer.pubkey(), recent_blockhash)
    return Transaction([fee_payer, mint_authority], message, recent_blockhash)


# --------------------------------------------------------------------------- errors


class Refusal(enum.Enum):
    """Why the chain refused (or failed) one of zpay's transactions."""

    ALREADY_PROCESSED = "already_processed"
    BLOCKHASH_NOT_FOUND = "blockhash_not_found"
    INSUFFICIENT_TOKENS = "insufficient_tokens"  # the token source lacks funds or an account
    FEE_PAYER_UNFUNDED = "fee_payer_unfunded"  # the platform cannot pay fees or rent
    SIGNATURE_INVALID = "signature_invalid"
    REJECTED = "rejected"  # anything else a program refused


def classify_error(err: TransactionErrorType | None) -> Refusal:
    if err is None:
        return Refusal.REJECTED
    if isinstance(err, TransactionErrorFieldless):
        if err == TransactionErrorFieldless.AlreadyProcessed:
            return Refusal.ALREADY_PROCESSED
        if err == TransactionErrorFieldless.BlockhashNotFound:
            return Refusal.BLOCKHASH_NOT_FOUND
        if err in (
            TransactionErrorFieldless.InsufficientFundsForFee,
            TransactionErrorFieldless.AccountNotFound,
            TransactionErrorFieldless.InvalidAccountForFee,
        ):
            return Refusal.FEE_PAYER_UNFUNDED
        if err in (
            TransactionErrorFieldless.SignatureFailure,
            TransactionErrorFieldless.MissingSignatureForFee,
        ):
            return Refusal.SIGNATURE_INVALID
        return Refusal.REJECTED
    if isinstance(err, TransactionErrorInsufficientFundsForRent):
        return Refusal.FEE_PAYER_UNFUNDED
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if err.index == TOKEN_INSTRUCTION_INDEX:
            if isinstance(inner, InstructionErrorCustom):
                return (
                    Refusal.INSUFFICIENT_TOKENS
                    if inner.code == _SPL_TOKEN_INSUFFICIENT_FUNDS
                    else Refusal.REJECTED
                )
            # A source token account that does not exist reaches the token program as an
            # empty system account: the user simply has no balance of this token.
            if inner in (
                InstructionErrorFieldless.UninitializedAccount,
                InstructionErrorFieldless.InvalidAccountData,
                InstructionErrorFieldless.IncorrectProgramId,
                InstructionErrorFieldless.InsufficientFunds,
            ):
                return Refusal.INSUFFICIENT_TOKENS
            return Refusal.REJECTED
        if (
            err.index == _ATA_INSTRUCTION_INDEX
            and isinstance(inner, InstructionErrorCustom)
            and inner.code == _SYSTEM_INSUFFICIENT_LAMPORTS
        ):
            return Refusal.FEE_PAYER_UNFUNDED
        return Refusal.REJECTED
    return Refusal.REJECTED


def describe_error(err: TransactionErrorType | None) -> str:
    """A short, stable, human description (no library reprs in our error messages)."""
    if err is None:
        return "unknown error"
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if isinstance(inner, InstructionErrorCustom):
            text = _SPL_TOKEN_ERRORS.get(inner.code, f"custom program error {inner.code}")
            if err.index != TOKEN_INSTRUCTION_INDEX and inner.code == _SYSTEM_INSUFFICIENT_LAMPORTS:
                text = "insufficient lamports"
            return f"instruction {err.index}: {text}"
        return f"instruction {err.index}: {_enum_name(inner)}"
    if isinstance(err, TransactionErrorInsufficientFundsForRent):
        return f"insufficient funds for rent (account {err.account_index})"
    return _enum_name(err)


def _enum_name(value: object) -> str:
    text = str(value)
    return text.rsplit(".", 1)[-1] if "." in text else text
