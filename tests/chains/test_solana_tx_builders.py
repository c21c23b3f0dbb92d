"""solana_tx builds its token instructions and signatures directly, not through the spl
builders and `Transaction(signers, ...)`: the bytes must be exactly what those give."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (
    close_account,
    create_idempotent_associated_token_account,
    get_associated_token_address,
    transfer_checked,
)
from spl.token.models import CloseAccountParams, TransferCheckedParams

from zpay.chains import solana_tx as stx
from zpay.chains.protocol import ChainError, Family, NetworkInfo, TokenInfo
from zpay.chains.solana import RecentBlockhash, SolanaAdapter

FEE_PAYER, USER, SESSION = (Keypair.from_seed(bytes([i]) * 32) for i in (11, 12, 13))
MINT = Keypair.from_seed(bytes([14]) * 32).pubkey()
BLOCKHASH = Hash(bytes(range(32)))
# The user, an arbitrary wallet, the system program (all-zero key), the session wallet
# itself and the fee payer: every way the destination can share accounts with the rest.
DESTINATIONS = [
    USER.pubkey(),
    Keypair.from_seed(bytes([15]) * 32).pubkey(),
    Pubkey.default(),
    SESSION.pubkey(),
    FEE_PAYER.pubkey(),
]
AMOUNTS = [1, 255, 256, 1_234_567, 2**32, stx.U64_MAX]
DECIMALS = [0, 6, 9, 255]


def _cases() -> Iterator[tuple[Pubkey, int, int]]:
    for i, destination in enumerate(DESTINATIONS):
        for j, amount in enumerate(AMOUNTS):
            # Every destination and amount, each with two of the decimals.
            yield destination, amount, DECIMALS[(i + j) % len(DECIMALS)]
            yield destination, amount, DECIMALS[(i + j + 1) % len(DECIMALS)]


def _reference_transfer_ixs(
    fee_payer: Pubkey, owner: Pubkey, destination: Pubkey, amount: int, decimals: int
) -> list[Instruction]:
    return [
        create_idempotent_associated_token_account(fee_payer, destination, MINT, TOKEN_PROGRAM_ID),
        transfer_checked(
            TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                source=get_associated_token_address(owner, MINT, TOKEN_PROGRAM_ID),
                mint=MINT,
                dest=get_associated_token_address(destination, MINT, TOKEN_PROGRAM_ID),
                owner=owner,
                amount=amount,
                decimals=decimals,
            )
        ),
    ]


def _reference_transfer(
    destination: Pubkey, amount: int, decimals: int, reference_seed: str
) -> Transaction:
    instructions = [
        *_reference_transfer_ixs(
            FEE_PAYER.pubkey(), SESSION.pubkey(), destination, amount, decimals
        ),
        Instruction(stx.MEMO_PROGRAM_ID, stx.payment_memo(reference_seed).encode(), []),
    ]
    message = Message.new_with_blockhash(instructions, FEE_PAYER.pubkey(), BLOCKHASH)
    return Transaction([FEE_PAYER, SESSION], message, BLOCKHASH)


def _reference_sweep(destination: Pubkey, amount: int, decimals: int) -> Transaction:
    instructions: list[Instruction] = []
    if amount > 0:
        instructions += _reference_transfer_ixs(
            FEE_PAYER.pubkey(), SESSION.pubkey(), destination, amount, decimals
        )
    instructions.append(
        close_account(
            CloseAccountParams(
                program_id=TOKEN_PROGRAM_ID,
                account=get_associated_token_address(SESSION.pubkey(), MINT, TOKEN_PROGRAM_ID),
                dest=FEE_PAYER.pubkey(),
                owner=SESSION.pubkey(),
            )
        )
    )
    message = Message.new_with_blockhash(instructions, FEE_PAYER.pubkey(), BLOCKHASH)
    return Transaction([FEE_PAYER, SESSION], message, BLOCKHASH)


def _one_unit(**changes: object) -> dict[str, object]:
    """The arguments of a transfer (or sweep) of 1 unit from the session wallet to the
    user, with `changes`."""
    return {"fee_payer": FEE_PAYER, "owner": SESSION, "destination_owner": USER.pubkey(),
            "mint": MINT, "decimals": 6, "amount_base_units": 1,
            "recent_blockhash": BLOCKHASH, **changes}


@pytest.mark.parametrize("known_pubkeys", [False, True], ids=["derived", "passed"])
def test_transfer_is_byte_identical_to_the_spl_builders(known_pubkeys: bool) -> None:
    extra = (
        {"fee_payer_pubkey": FEE_PAYER.pubkey(), "owner_pubkey": SESSION.pubkey()}
        if known_pubkeys
        else {}
    )
    for n, (destination, amount, decimals) in enumerate(_cases()):
        seed = f"pay_{n}"
        built = stx.build_transfer(**_one_unit(  # type: ignore[arg-type]
            destination_owner=destination, decimals=decimals, amount_base_units=amount,
            reference_seed=seed, **extra))
        reference = _reference_transfer(destination, amount, decimals, seed)
        assert bytes(built) == bytes(reference), (destination, amount, decimals)
        assert built.message.instructions == reference.message.instructions
        built.verify()


@pytest.mark.parametrize("known_pubkeys", [False, True], ids=["derived", "passed"])
def test_sweep_is_byte_identical_to_the_spl_builders(known_pubkeys: bool) -> None:
    extra = (
        {"fee_payer_pubkey": FEE_PAYER.pubkey(), "owner_pubkey": SESSION.pubkey()}
        if known_pubkeys
        else {}
    )
    for destination, amount, decimals in [*_cases(), (USER.pubkey(), 0, 6)]:
        built = stx.build_sweep(**_one_unit(  # type: ignore[arg-type]
            destination_owner=destination, decimals=decimals, amount_base_units=amount,
            **extra))
        assert bytes(built) == bytes(_reference_sweep(destination, amount, decimals)), (
            destination,
            amount,
            decimals,
        )
        built.verify()


def test_approval_message_is_byte_identical_to_the_spl_builders() -> None:
    for n, (_destination, amount, decimals) in enumerate(_cases()):
        approval_id = f"ap_{n}"
        built = stx.build_approval_message(
            fee_payer=FEE_PAYER.pubkey(),
            user_wallet=USER.pubkey(),
            session_wallet=SESSION.pubkey(),
            mint=MINT,
            decimals=decimals,
            amount_base_units=amount,
            recent_blockhash=BLOCKHASH,
            approval_id=approval_id,
        )
        # The user pays into the session wallet, the fee payer creates its token account.
        instructions = [
            *_reference_transfer_ixs(
                FEE_PAYER.pubkey(), USER.pubkey(), SESSION.pubkey(), amount, decimals
            ),
            Instruction(stx.MEMO_PROGRAM_ID, f"zpay approval {approval_id}".encode(), []),
        ]
        reference = Message.new_with_blockhash(instructions, FEE_PAYER.pubkey(), BLOCKHASH)
        assert bytes(built) == bytes(reference), (amount, decimals)


def test_decimals_outside_a_byte_are_refused_not_wrapped() -> None:
    with pytest.raises(struct.error):
        stx.build_transfer(**_one_unit(decimals=256, reference_seed="p"))  # type: ignore[arg-type]


def test_the_fee_payer_check_holds_with_passed_pubkeys() -> None:
    from_itself = _one_unit(owner=FEE_PAYER, fee_payer_pubkey=FEE_PAYER.pubkey(),
                            owner_pubkey=FEE_PAYER.pubkey())
    with pytest.raises(ChainError) as err:
        stx.build_transfer(**from_itself, reference_seed="p")  # type: ignore[arg-type]
    assert err.value.code == "invalid_wallet"
    with pytest.raises(ChainError) as err:
        stx.build_sweep(**from_itself)  # type: ignore[arg-type]
    assert err.value.code == "invalid_wallet"


def test_keypair_from_secret_refuses_a_public_half_that_is_not_the_secrets() -> None:
    # keypair_from_secret compares the secret's trailing 32 bytes with the expected address
    # instead of deriving the public key: only sound because the library refuses a secret
    # whose two halves do not belong together, even when the public half is the expected one.
    tampered = bytes(SESSION)[:32] + bytes(USER.pubkey())
    with pytest.raises(ChainError) as err:
        stx.keypair_from_secret(tampered, expected_address=str(USER.pubkey()))
    assert err.value.code == "invalid_wallet_secret"
    assert tampered.hex() not in str(err.value) and err.value.__cause__ is None
    keypair = stx.keypair_from_secret(
        bytearray(bytes(SESSION)), expected_address=str(SESSION.pubkey())
    )
    assert keypair.pubkey() == SESSION.pubkey()
    with pytest.raises(ChainError) as err:
        stx.keypair_from_secret(bytes(SESSION), expected_address="not an address")
    assert err.value.code == "wallet_mismatch"


class _Backend:
    """Just enough of a backend to prepare transfers: a fixed blockhash, no chain."""

    poll_interval_s = 0.0

    async def latest_blockhash(self) -> RecentBlockhash:
        return RecentBlockhash(BLOCKHASH, 100, 60.0)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("close_source", [False, True], ids=["transfer", "sweep"])
async def test_prepare_transfer_payload_is_byte_identical(close_source: bool) -> None:
    info = NetworkInfo(
        name="solana-builders-test",
        family=Family.SOLANA,
        chain_id=None,
        environment="test",
        local=True,
        confirmations=1,
    )
    adapter = SolanaAdapter(
        network=info,
        backend=_Backend(),  # type: ignore[arg-type]
        fee_payer=FEE_PAYER,
        tokens={"USDC": TokenInfo("USDC", str(MINT), 6, stx.U64_MAX)},
    )
    for amount in (1, 1_234_567, stx.U64_MAX):
        prepared = await adapter.prepare_transfer(
            secret=bytes(SESSION),
            source=str(SESSION.pubkey()),
            destination=str(USER.pubkey()),
            token=adapter.token("USDC"),
            amount_base_units=amount,
            reference_seed="pay_1",
            close_source=close_source,
        )
        reference = (
            _reference_sweep(USER.pubkey(), amount, 6)
            if close_source
            else _reference_transfer(USER.pubkey(), amount, 6, "pay_1")
        )
        assert prepared.payload == bytes(reference)
        assert prepared.reference == str(reference.signatures[0])
