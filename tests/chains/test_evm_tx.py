"""Unit tests of the pure EVM builders/checkers (no node)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from eth_account import Account

from zpay.chains import evm_tx
from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalSignatureInvalid,
    InvalidAddress,
)
from zpay.chains.registry import chains_data_dir, get_network

TOKEN = "0x" + "ab" * 20
SESSION = "0x" + "5e" * 20
DOMAIN = evm_tx.TokenDomain("USD Coin", "2", 8453, evm_tx.checksum(TOKEN))


def _user() -> tuple[bytes, str]:
    secret = evm_tx.new_private_key()
    return secret, evm_tx.address_of(secret)


def _auth(user: str, **changes: Any) -> evm_tx.Authorization:
    auth = evm_tx.Authorization(
        from_address=user,
        to=evm_tx.checksum(SESSION),
        value=25_000_000,
        valid_after=0,
        valid_before=2_000_000_000,
        nonce=evm_tx.approval_nonce("apr_1"),
    )
    return dataclasses.replace(auth, **changes)


def _wallet_sign(secret: bytes, typed: dict[str, Any]) -> str:
    """What a wallet's eth_signTypedData_v4 returns for the public JSON."""
    return "0x" + bytes(Account.sign_typed_data(secret, full_message=typed).signature).hex()


def test_usdc_mainnet_domain_separator_matches_the_contract() -> None:
    # DOMAIN_SEPARATOR() of USDC on Ethereum mainnet, as the contract returns it.
    domain = evm_tx.TokenDomain("USD Coin", "2", 1, "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")
    assert domain.separator().hex() == (
        "06c37168a7db5138defc7866392bb87a741f9b3d104deb5094588ce041cae335"
    )


def test_registry_evm_networks_are_complete() -> None:
    for name in (
        "base-sepolia",
        "base",
        "arbitrum-sepolia",
        "arbitrum",
        "ethereum-sepolia",
        "ethereum",
        "evm-local",
    ):
        spec = get_network(name)
        assert spec.info.family.value == "evm" and spec.info.chain_id
        usdc = spec.tokens["USDC"]
        assert usdc.decimals == 6 and usdc.eip712_name and usdc.eip712_version == "2"
        if not spec.info.local:
            assert spec.rpc_url.startswith("https://")
            assert evm_tx.checksum(usdc.address) == usdc.address  # EIP-55 in the file
    assert get_network("evm-local").info.chain_id == 31337


def test_committed_artifact_is_built_from_the_committed_source() -> None:
    folder = chains_data_dir() / "evm"
    artifact = json.loads((folder / "artifacts" / "ZpayTestUSD.json").read_text())
    source = (folder / "contracts" / "ZpayTestUSD.sol").read_bytes()
    assert artifact["sourceSha256"] == hashlib.sha256(source).hexdigest(), (
        "stale artifact: run `npm run build:contracts`"
    )
    names = {entry.get("name") for entry in artifact["abi"]}
    assert {
        "transferWithAuthorization",
        "receiveWithAuthorization",
        "cancelAuthorization",
        "authorizationState",
        "permit",
        "mint",
        "AuthorizationUsed",
    } <= names


def test_payment_nonce_is_deterministic_and_separate_from_approvals() -> None:
    assert evm_tx.payment_nonce("pay_1") == evm_tx.payment_nonce("pay_1")
    assert evm_tx.payment_nonce("pay_1") != evm_tx.payment_nonce("pay_2")
    assert evm_tx.payment_nonce("x") != evm_tx.approval_nonce("x")
    assert len(evm_tx.payment_nonce("pay_1")) == 32


def test_public_typed_data_is_json_and_what_the_user_signs_verifies() -> None:
    secret, user = _user()
    auth = _auth(user)
    typed = evm_tx.typed_data(DOMAIN, auth)
    typed = json.loads(json.dumps(typed))  # it survives the API round trip
    assert typed["message"]["value"] == "25000000"  # a string, never a float
    checked = evm_tx.check_signed_authorization(
        domain=DOMAIN,
        issued=auth,
        user_wallet=user,
        signature=_wallet_sign(secret, typed),
        claimed_typed_data=typed,
        now_s=1_900_000_000,
    )
    assert checked.authorization == auth and checked.v in (27, 28)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("message", "value"), "25000001"),
        (("message", "to"), "0x" + "66" * 20),
        (("domain", "chainId"), 1),
        (("domain", "verifyingContract"), "0x" + "77" * 20),
        (("message", "nonce"), "0x" + "00" * 32),
        (("message", "validBefore"), "2000000001"),
    ],
)
def test_a_tampered_authorization_is_a_mismatch(path: tuple[str, str], value: Any) -> None:
    secret, user = _user()
    auth = _auth(user)
    tampered = evm_tx.typed_data(DOMAIN, auth)
    tampered[path[0]][path[1]] = value
    signature = _wallet_sign(secret, tampered)
    with pytest.raises(ApprovalMismatch):
        evm_tx.check_signed_authorization(
            domain=DOMAIN,
            issued=auth,
            user_wallet=user,
            signature=signature,
            claimed_typed_data=tampered,
            now_s=0,
        )
    # Without the typed data the signature still cannot pass: it is checked against
    # what zpay issued, and it was made over something else.
    with pytest.raises(ApprovalSignatureInvalid):
        evm_tx.check_signed_authorization(
            domain=DOMAIN,
            issued=auth,
            user_wallet=user,
            signature=signature,
            claimed_typed_data=None,
            now_s=0,
        )


def test_wrong_signer_and_expiry_and_malleability() -> None:
    secret, user = _user()
    other_secret, _ = _user()
    auth = _auth(user)
    typed = evm_tx.typed_data(DOMAIN, auth)
    with pytest.raises(ApprovalSignatureInvalid):
        evm_tx.check_signed_authorization(
            domain=DOMAIN,
            issued=auth,
            user_wallet=user,
            signature=_wallet_sign(other_secret, typed),
            claimed_typed_data=typed,
            now_s=0,
        )
    good = _wallet_sign(secret, typed)
    with pytest.raises(ApprovalExpired):
        evm_tx.check_signed_authorization(
            domain=DOMAIN,
            issued=auth,
            user_wallet=user,
            signature=good,
            claimed_typed_data=None,
            now_s=auth.valid_before,
        )
    raw = bytes.fromhex(good[2:])
    high_s = (evm_tx.SECP256K1_N - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    flipped = raw[:32] + high_s + bytes([55 - raw[64]])  # the other valid-looking twin
    with pytest.raises(ApprovalSignatureInvalid):
        evm_tx.check_signed_authorization(
            domain=DOMAIN,
            issued=auth,
            user_wallet=user,
            signature="0x" + flipped.hex(),
            claimed_typed_data=None,
            now_s=0,
        )
    for junk in (None, "0x1234", "nothex", 42):
        with pytest.raises(ApprovalSignatureInvalid):
            evm_tx.check_signed_authorization(
                domain=DOMAIN,
                issued=auth,
                user_wallet=user,
                signature=junk,
                claimed_typed_data=None,
                now_s=0,
            )


def test_session_wallet_signs_only_as_itself() -> None:
    secret, user = _user()
    _, other = _user()
    signed = evm_tx.sign_authorization(secret, DOMAIN, _auth(user))
    assert evm_tx.recover_signer(DOMAIN, signed.authorization, signed.v, signed.r, signed.s) == user
    with pytest.raises(evm_tx.ChainError):
        evm_tx.sign_authorization(secret, DOMAIN, _auth(other))


def _funding(user: str, **overrides: Any) -> evm_tx.UnsignedTransaction:
    kwargs: dict[str, Any] = {
        "chain_id": 8453,
        "token_address": evm_tx.checksum(TOKEN),
        "user_wallet": user,
        "session_wallet": evm_tx.checksum(SESSION),
        "amount_base_units": 5_000_000,
        "nonce": 7,
        "max_fee_per_gas": 2 * 10**9,
        "max_priority_fee_per_gas": 10**8,
    }
    kwargs.update(overrides)
    return evm_tx.build_funding_transaction(**kwargs)


def _sign_tx(secret: bytes, tx: dict[str, Any]) -> str:
    return "0x" + bytes(Account.sign_transaction(tx, secret).raw_transaction).hex()


def test_funding_transaction_round_trip() -> None:
    secret, user = _user()
    issued = _funding(user)
    assert evm_tx.UnsignedTransaction.from_json(json.loads(json.dumps(issued.to_json()))) == issued
    assert evm_tx.decode_erc20_transfer(issued.data) == (evm_tx.checksum(SESSION), 5_000_000)
    signable = dict(issued.as_signable(), gas=80_000, maxFeePerGas=3 * 10**9)  # user's choice
    checked = evm_tx.check_signed_funding_transaction(
        signed_transaction=_sign_tx(secret, signable), issued=issued, user_wallet=user
    )
    assert checked.nonce == 7 and checked.tx_hash.startswith("0x")


@pytest.mark.parametrize(
    "change",
    [
        {"chainId": 1},
        {"nonce": 8},
        {"to": "0x" + "77" * 20},
        {"value": 1},
        {"data": evm_tx.encode_erc20_transfer("0x" + "66" * 20, 5_000_000)},
        {"data": evm_tx.encode_erc20_transfer(SESSION, 5_000_001)},
        {"data": b"\x09\x5e\xa7\xb3" + evm_tx.encode_erc20_transfer(SESSION, 5_000_000)[4:]},
        {"accessList": [{"address": "0x" + "11" * 20, "storageKeys": []}]},
    ],
)
def test_a_tampered_funding_transaction_is_a_mismatch(change: dict[str, Any]) -> None:
    secret, user = _user()
    issued = _funding(user)
    with pytest.raises(ApprovalMismatch):
        evm_tx.check_signed_funding_transaction(
            signed_transaction=_sign_tx(secret, dict(issued.as_signable(), **change)),
            issued=issued,
            user_wallet=user,
        )


def test_funding_transaction_signer_and_type_are_checked() -> None:
    secret, user = _user()
    other_secret, _ = _user()
    issued = _funding(user)
    with pytest.raises(ApprovalSignatureInvalid):
        evm_tx.check_signed_funding_transaction(
            signed_transaction=_sign_tx(other_secret, issued.as_signable()),
            issued=issued,
            user_wallet=user,
        )
    legacy = {
        k: v
        for k, v in issued.as_signable().items()
        if k not in ("type", "maxFeePerGas", "maxPriorityFeePerGas", "accessList")
    }
    legacy["gasPrice"] = 10**9
    with pytest.raises(ApprovalMismatch):
        evm_tx.check_signed_funding_transaction(
            signed_transaction=_sign_tx(secret, legacy), issued=issued, user_wallet=user
        )
    for junk in (None, "0x", "0x02zz", b"\x02"):
        with pytest.raises(ApprovalMismatch):
            evm_tx.check_signed_funding_transaction(
                signed_transaction=junk, issued=issued, user_wallet=user
            )


def test_native_funding_transaction_is_a_value_transfer() -> None:
    _, user = _user()
    issued = _funding(user, token_address=evm_tx.NATIVE_ASSET, amount_base_units=10**18)
    assert issued.to == evm_tx.checksum(SESSION) and issued.value == 10**18
    assert issued.data == b"" and issued.gas == evm_tx.NATIVE_TRANSFER_GAS


def test_addresses_and_amounts() -> None:
    assert evm_tx.checksum(TOKEN.lower()) == evm_tx.checksum(TOKEN.upper().replace("0X", "0x"))
    bad_checksum = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eb48"  # one letter case flipped
    for bad in ("0x123", "hello", bad_checksum):
        with pytest.raises(InvalidAddress):
            evm_tx.checksum(bad)
    for bad_amount in (0, -1, 2**256, True, 1.5):
        with pytest.raises(evm_tx.ChainError):
            evm_tx.require_amount(bad_amount)  # type: ignore[arg-type]
    assert evm_tx.contract_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 0) == (
        "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # anvil's well-known first deployment
    )


# ------------------------------------------------------- references and payloads


def test_references_name_the_transfer_and_parse_back() -> None:
    from zpay.chains import evm_refs

    secret, user = _user()
    auth = _auth(user)
    signed = evm_tx.sign_authorization(secret, DOMAIN, auth)
    payment = evm_refs.payment_reference(auth)
    approval = evm_refs.approval_reference(auth)
    assert payment != approval and approval.startswith(payment + ":")
    assert len(approval) <= 200  # fits the reference column, whatever the amount
    assert len(evm_refs.approval_reference(dataclasses.replace(auth, value=2**256 - 1))) <= 200
    for reference, digest in (
        (payment, None),
        (approval, evm_refs.transfer_digest(auth.to, auth.value)),
    ):
        parsed = evm_refs.parse_reference(reference)
        assert isinstance(parsed, evm_refs.AuthorizationRef)
        assert (parsed.authorizer, parsed.nonce, parsed.valid_before, parsed.digest) == (
            user,
            auth.nonce,
            auth.valid_before,
            digest,
        )
        assert parsed.key == evm_refs.authorization_key(user, auth.nonce)
        assert evm_refs.reference_of(auth, reference)
    # Renewals (same nonce, other validBefore) have other references, the same key.
    renewal = dataclasses.replace(auth, valid_before=auth.valid_before + 60)
    assert evm_refs.approval_reference(renewal) != approval
    assert not evm_refs.reference_of(renewal, approval)
    tx_ref = evm_refs.transaction_reference("0x" + "AB" * 32, user, 7)
    parsed_tx = evm_refs.parse_reference(tx_ref)
    assert parsed_tx == evm_refs.TransactionRef("0x" + "ab" * 32, user, 7)
    for bad in ("", "tx:0x12:0x00:1", f"{user}:0x12:5", "a:b:c:d:e", f"{user}:0x{'00' * 32}:x"):
        with pytest.raises(evm_tx.ChainError):
            evm_refs.parse_reference(bad)

    payload = evm_refs.authorization_payload(8453, DOMAIN.verifying_contract, signed)
    token, decoded = evm_refs.decode_payload(payload, 8453)  # type: ignore[misc]
    assert token == DOMAIN.verifying_contract and decoded == signed
    with pytest.raises(evm_tx.ChainError):
        evm_refs.decode_payload(payload, 1)  # another chain
    with pytest.raises(evm_tx.ChainError):
        evm_refs.decode_payload(b"{not json", 8453)


def test_a_raw_transaction_payload_is_told_apart_and_decoded() -> None:
    from zpay.chains import evm_refs

    secret, user = _user()
    raw, tx_hash = evm_tx.sign_relayer_transaction(
        secret,
        chain_id=8453,
        nonce=3,
        to=evm_tx.checksum(SESSION),
        data=b"\x01\x02",
        gas=50_000,
        max_fee_per_gas=7,
        max_priority_fee_per_gas=2,
        value=5,
    )
    decoded = evm_refs.decode_payload(raw, 8453)
    assert isinstance(decoded, evm_tx.DecodedTransaction)
    assert (decoded.sender, decoded.nonce, decoded.tx_hash, decoded.raw) == (user, 3, tx_hash, raw)
    assert (decoded.to, decoded.value, decoded.data, decoded.gas) == (
        evm_tx.checksum(SESSION),
        5,
        b"\x01\x02",
        50_000,
    )
    assert (decoded.max_fee_per_gas, decoded.max_priority_fee_per_gas) == (7, 2)
    with pytest.raises(evm_tx.ChainError):
        evm_refs.decode_payload(raw, 1)
    with pytest.raises(evm_tx.ChainError):
        evm_tx.decode_signed_transaction(b"\x02garbage")


def test_receipt_funds_only_the_approved_transfer() -> None:
    from zpay.chains import evm_refs

    _, user = _user()
    auth = _auth(user)
    ref = evm_refs.parse_reference(evm_refs.approval_reference(auth))
    assert isinstance(ref, evm_refs.AuthorizationRef)

    def receipt(to: str, value: int, token: str = TOKEN) -> dict[str, Any]:
        return {
            "logs": [
                {
                    "address": token,
                    "data": value.to_bytes(32, "big"),
                    "topics": [
                        evm_tx.TOPIC_TRANSFER,
                        bytes(12) + bytes.fromhex(user[2:]),
                        bytes(12) + bytes.fromhex(to[2:]),
                    ],
                }
            ]
        }

    assert evm_refs.receipt_funds(receipt(auth.to, auth.value), TOKEN, ref)
    assert not evm_refs.receipt_funds(receipt(auth.to, auth.value + 1), TOKEN, ref)
    assert not evm_refs.receipt_funds(receipt("0x" + "99" * 20, auth.value), TOKEN, ref)
    assert not evm_refs.receipt_funds(receipt(auth.to, auth.value, "0x" + "cd" * 20), TOKEN, ref)
