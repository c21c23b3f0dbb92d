"""Pure builders and checkers for the EVM family: no I/O, no clock, no web3.

Everything that decides what a user or a session wallet signs, and whether what came back
is exactly that, lives here so it can be unit-tested without a node; `evm.py` only sends.

Two approval forms (see DESIGN.md "Approvals the user signs"):

* EIP-3009 — the user signs EIP-712 typed data `TransferWithAuthorization(from, to, value,
  validAfter, validBefore, nonce)` for the token's domain; zpay's relayer submits it.
* Fallback — zpay issues an unsigned EIP-1559 transaction (ERC-20 `transfer` to the token,
  or a native value transfer) that the user signs and zpay broadcasts after decoding it and
  checking every field.

Payments and sweeps are EIP-3009 authorizations signed by the session wallet.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import is_address, is_checksum_address, keccak, to_checksum_address
from hexbytes import HexBytes

from zpay.chains.protocol import (
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalSignatureInvalid,
    ChainError,
    InvalidAddress,
)

NATIVE_ASSET = "native"
"""`address` of a token that is the chain's native asset (ETH) rather than a contract."""

UINT256_MAX = 2**256 - 1
ZERO_ADDRESS = "0x" + "00" * 20

# secp256k1 group order. EIP-2 (and USDC's ECRecover) accept only the low-s form of a
# signature, so a high-s twin is refused here instead of reverting on chain.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2

TRANSFER_WITH_AUTHORIZATION_FIELDS: tuple[dict[str, str], ...] = (
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
)
EIP712_DOMAIN_FIELDS: tuple[dict[str, str], ...] = (
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
)


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


SELECTOR_TRANSFER = selector("transfer(address,uint256)")
SELECTOR_BALANCE_OF = selector("balanceOf(address)")
SELECTOR_MINT = selector("mint(address,uint256)")
SELECTOR_DOMAIN_SEPARATOR = selector("DOMAIN_SEPARATOR()")
SELECTOR_AUTHORIZATION_STATE = selector("authorizationState(address,bytes32)")
SELECTOR_TRANSFER_WITH_AUTHORIZATION = selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
TOPIC_TRANSFER = keccak(text="Transfer(address,address,uint256)")
TOPIC_AUTHORIZATION_USED = keccak(text="AuthorizationUsed(address,bytes32)")


# ------------------------------------------------------------------ addresses, values


def checksum(address: str) -> str:
    """Canonical (EIP-55) form; refuses malformed input and a mixed-case bad checksum."""
    if not isinstance(address, str) or not is_address(address):
        raise InvalidAddress(f"not an EVM address: {address!r}")
    body = address[2:]
    # Mixed case means EIP-55 is claimed; a wrong one is a typo, not another address.
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise InvalidAddress(f"bad EIP-55 checksum: {address!r}")
    return str(to_checksum_address(address))


def same_address(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def is_native(token_address: str) -> bool:
    return token_address.lower() == NATIVE_ASSET


def require_amount(value: int) -> int:
    # bool is an int subclass; a True amount is a bug upstream, not one base unit.
    if type(value) is not int or not 0 < value <= UINT256_MAX:
        raise ChainError(f"amount must be an int in 1..2**256-1 base units, got {value!r}")
    return value


def _uint(value: Any, field_name: str) -> int:
    """An unsigned integer from an int or a decimal/0x string (never a float)."""
    if type(value) is int:
        result = value
    elif isinstance(value, str):
        try:
            result = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
        except ValueError as exc:
            raise ApprovalMismatch(f"{field_name} is not an integer: {value!r}") from exc
    else:
        raise ApprovalMismatch(f"{field_name} must be an integer, got {type(value).__name__}")
    if not 0 <= result <= UINT256_MAX:
        raise ApprovalMismatch(f"{field_name} out of uint256 range")
    return result


def _hex_bytes(value: Any, field_name: str, *, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ApprovalMismatch(f"{field_name} must be a 0x-prefixed hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ApprovalMismatch(f"{field_name} is not hex") from exc
    if length is not None and len(raw) != length:
        raise ApprovalMismatch(f"{field_name} must be {length} bytes")
    return raw


def quantity(value: int) -> str:
    """JSON-RPC hex quantity: what eth_signTransaction takes, and safe past 2**53 in JS."""
    return hex(value)


# ------------------------------------------------------------------------ nonces


def payment_nonce(reference_seed: str) -> bytes:
    """EIP-3009 nonce of a payment: a retried payment re-derives the same nonce, and the
    token marks a (from, nonce) pair used once, so it can never settle twice. The prefix
    keeps payment and approval nonces in separate spaces."""
    if not reference_seed:
        raise ChainError("reference_seed must not be empty")
    return keccak(b"zpay:payment:" + reference_seed.encode())


def approval_nonce(approval_id: str) -> bytes:
    """EIP-3009 nonce of a funding approval: re-issuing the same approval (e.g. after it
    expired unsigned) keeps the nonce, so at most one version can ever fund."""
    if not approval_id:
        raise ChainError("approval_id must not be empty")
    return keccak(b"zpay:approval:" + approval_id.encode())


def random_nonce() -> bytes:
    return secrets.token_bytes(32)


# ------------------------------------------------------------------------ wallets


def ecc_backend_name() -> str:
    """eth-keys' signing backend. With `coincurve` importable it is CoinCurveECCBackend
    (libsecp256k1, ~10x faster than the pure-Python fallback, which matters for a relayer
    signing every payment)."""
    from eth_keys.backends import get_backend

    return type(get_backend()).__name__


def new_private_key() -> bytes:
    while True:
        candidate = secrets.token_bytes(32)
        # Rejection sampling: 0 and values >= n are not valid secp256k1 keys.
        if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
            return candidate


def address_of(secret: bytes) -> str:
    if len(secret) != 32:
        raise ChainError("an EVM private key is 32 bytes")
    try:
        return str(keys.PrivateKey(secret).public_key.to_checksum_address())
    except (ValidationError, ValueError):
        # `from None`: the library's message must not drag key material into a log.
        raise ChainError("invalid EVM private key") from None


# ------------------------------------------------------------------- EIP-712 / 3009


@dataclass(frozen=True)
class TokenDomain:
    """EIP-712 domain of a token: the token contract's name()/version() on one chain."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def as_typed_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }

    def separator(self) -> bytes:
        """The DOMAIN_SEPARATOR() the token contract must return for this domain."""
        return bytes(_signable(self, _placeholder_authorization()).header)


@dataclass(frozen=True)
class Authorization:
    """An EIP-3009 TransferWithAuthorization. Ints throughout: amounts never float."""

    from_address: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes

    def message(self) -> dict[str, Any]:
        return {
            "from": self.from_address,
            "to": self.to,
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": self.nonce,
        }

    def to_json(self) -> dict[str, str]:
        # uint256 as decimal strings: JSON numbers lose precision past 2**53 in JS and
        # in some JSON columns.
        return {
            "from": self.from_address,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": "0x" + self.nonce.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Authorization:
        try:
            return cls(
                from_address=checksum(str(data["from"])),
                to=checksum(str(data["to"])),
                value=_uint(data["value"], "value"),
                valid_after=_uint(data["validAfter"], "validAfter"),
                valid_before=_uint(data["validBefore"], "validBefore"),
                nonce=_hex_bytes(data["nonce"], "nonce", length=32),
            )
        except (KeyError, InvalidAddress) as exc:
            raise ApprovalMismatch(f"malformed TransferWithAuthorization: {exc}") from exc


def _placeholder_authorization() -> Authorization:
    return Authorization(ZERO_ADDRESS, ZERO_ADDRESS, 0, 0, 0, b"\x00" * 32)


def typed_data(domain: TokenDomain, auth: Authorization) -> dict[str, Any]:
    """The JSON a wallet's eth_signTypedData_v4 takes (uint256 as decimal strings)."""
    return {
        "types": {
            "EIP712Domain": [dict(f) for f in EIP712_DOMAIN_FIELDS],
            "TransferWithAuthorization": [dict(f) for f in TRANSFER_WITH_AUTHORIZATION_FIELDS],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": domain.as_typed_data(),
        "message": auth.to_json(),
    }


def _signable(domain: TokenDomain, auth: Authorization) -> SignableMessage:
    full = {
        "types": {
            "EIP712Domain": list(EIP712_DOMAIN_FIELDS),
            "TransferWithAuthorization": list(TRANSFER_WITH_AUTHORIZATION_FIELDS),
        },
        "primaryType": "TransferWithAuthorization",
        "domain": domain.as_typed_data(),
        "message": auth.message(),
    }
    return encode_typed_data(full_message=full)


@dataclass(frozen=True)
class SignedAuthorization:
    authorization: Authorization
    v: int  # 27 or 28, as the token's ecrecover wants it
    r: bytes
    s: bytes

    def to_payload(self) -> bytes:
        return json.dumps(
            {
                "authorization": self.authorization.to_json(),
                "signature": "0x" + (self.r + self.s + bytes([self.v])).hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> SignedAuthorization:
        try:
            data = json.loads(payload)
            auth = Authorization.from_json(data["authorization"])
            v, r, s = split_signature(data["signature"])
        except (ValueError, KeyError, TypeError, ChainError) as exc:
            raise ChainError(f"not a zpay EVM transfer payload: {exc}") from exc
        return cls(auth, v, r, s)


def split_signature(signature: str | bytes) -> tuple[int, bytes, bytes]:
    """(v, r, s) of a 65-byte r||s||v signature; v normalised to 27/28, low s enforced."""
    if isinstance(signature, str):
        text = signature[2:] if signature.startswith("0x") else signature
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ApprovalSignatureInvalid("signature is not hex") from exc
    elif isinstance(signature, bytes):
        raw = signature
    else:
        raise ApprovalSignatureInvalid("signature must be a 0x hex string")
    if len(raw) != 65:
        raise ApprovalSignatureInvalid("signature must be 65 bytes (r, s, v)")
    r, s, v = raw[:32], raw[32:64], raw[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28):
        raise ApprovalSignatureInvalid("signature v must be 27 or 28")
    if not 0 < int.from_bytes(s, "big") <= SECP256K1_HALF_N:
        raise ApprovalSignatureInvalid("signature s is not in the lower half order (EIP-2)")
    if not 0 < int.from_bytes(r, "big") < SECP256K1_N:
        raise ApprovalSignatureInvalid("signature r out of range")
    return v, r, s


def recover_signer(domain: TokenDomain, auth: Authorization, v: int, r: bytes, s: bytes) -> str:
    try:
        signer = Account.recover_message(_signable(domain, auth), signature=r + s + bytes([v]))
    except (BadSignature, ValidationError, ValueError) as exc:
        raise ApprovalSignatureInvalid("signature does not recover to an address") from exc
    return str(signer)


def sign_authorization(
    secret: bytes, domain: TokenDomain, auth: Authorization
) -> SignedAuthorization:
    """Sign as `auth.from_address` (the session wallet for payments and sweeps)."""
    if not same_address(address_of(secret), auth.from_address):
        raise ChainError("the key does not belong to the authorization's `from` address")
    signed = Account.sign_message(_signable(domain, auth), private_key=secret)
    v, r, s = split_signature(bytes(signed.signature))
    return SignedAuthorization(auth, v, r, s)


def _compare(field_name: str, issued: Any, claimed: Any) -> None:
    if issued != claimed:
        raise ApprovalMismatch(f"{field_name} differs from the issued approval")


def _compare_claimed_typed_data(
    claimed: Mapping[str, Any], domain: TokenDomain, issued: Authorization
) -> None:
    """A wallet may send back the typed data it signed; every field must be as issued."""
    if claimed.get("primaryType", "TransferWithAuthorization") != "TransferWithAuthorization":
        raise ApprovalMismatch("primaryType must be TransferWithAuthorization")
    claimed_domain = claimed.get("domain")
    claimed_message = claimed.get("message")
    if not isinstance(claimed_domain, Mapping) or not isinstance(claimed_message, Mapping):
        raise ApprovalMismatch("typed_data must carry a domain and a message")
    _compare("domain.name", domain.name, claimed_domain.get("name"))
    _compare("domain.version", domain.version, claimed_domain.get("version"))
    _compare("chainId", domain.chain_id, _uint(claimed_domain.get("chainId"), "chainId"))
    verifying = str(claimed_domain.get("verifyingContract", ""))
    if not same_address(domain.verifying_contract, verifying):
        raise ApprovalMismatch(
            "verifyingContract (token contract) differs from the issued approval"
        )
    message = Authorization.from_json(claimed_message)
    if not same_address(message.from_address, issued.from_address):
        raise ApprovalMismatch("from differs from the issued approval")
    if not same_address(message.to, issued.to):
        raise ApprovalMismatch("to (recipient) differs from the issued approval")
    _compare("value", issued.value, message.value)
    _compare("validAfter", issued.valid_after, message.valid_after)
    _compare("validBefore", issued.valid_before, message.valid_before)
    _compare("nonce", issued.nonce, message.nonce)


def check_signed_authorization(
    *,
    domain: TokenDomain,
    issued: Authorization,
    user_wallet: str,
    signature: Any,
    claimed_typed_data: Mapping[str, Any] | None,
    now_s: int | None,
) -> SignedAuthorization:
    """Accept the user's signature only for exactly the issued authorization.

    The signature is verified against the typed data rebuilt from what zpay issued, never
    against anything the client sent, so a signature over any other field cannot pass.
    Raises ApprovalMismatch (the client says it signed something else),
    ApprovalSignatureInvalid (not user_wallet's signature over the issued data) or
    ApprovalExpired (validBefore reached at `now_s`; None skips that check for a caller
    that must first learn whether the approval already settled).
    """
    if not same_address(issued.from_address, user_wallet):
        raise ApprovalMismatch("the issued approval is for another user wallet")
    if claimed_typed_data is not None:
        _compare_claimed_typed_data(claimed_typed_data, domain, issued)
    v, r, s = split_signature(signature)
    if not same_address(recover_signer(domain, issued, v, r, s), user_wallet):
        raise ApprovalSignatureInvalid(
            "the approval is not signed by user_wallet over the issued typed data"
        )
    if now_s is not None and now_s >= issued.valid_before:
        raise ApprovalExpired("the approval's validBefore has passed; ask for a fresh approval")
    return SignedAuthorization(issued, v, r, s)


# ---------------------------------------------------------------------- calldata


def encode_transfer_with_authorization(signed: SignedAuthorization) -> bytes:
    auth = signed.authorization
    return SELECTOR_TRANSFER_WITH_AUTHORIZATION + abi_encode(
        [
            "address",
            "address",
            "uint256",
            "uint256",
            "uint256",
            "bytes32",
            "uint8",
            "bytes32",
            "bytes32",
        ],
        [
            auth.from_address,
            auth.to,
            auth.value,
            auth.valid_after,
            auth.valid_before,
            auth.nonce,
            signed.v,
            signed.r,
            signed.s,
        ],
    )


def encode_erc20_transfer(to: str, value: int) -> bytes:
    return SELECTOR_TRANSFER + abi_encode(["address", "uint256"], [to, value])


def decode_erc20_transfer(data: bytes) -> tuple[str, int] | None:
    """(to, value) of `transfer(address,uint256)` calldata in canonical encoding, else None."""
    if len(data) != 4 + 64 or data[:4] != SELECTOR_TRANSFER:
        return None
    to, value = abi_decode(["address", "uint256"], data[4:])
    # Re-encoding must give back the same bytes: dirty high bits in the address word
    # would otherwise decode to the same `to` while not being what zpay issued.
    if encode_erc20_transfer(to, value) != data:
        return None
    return str(to_checksum_address(to)), int(value)


def encode_balance_of(owner: str) -> bytes:
    return SELECTOR_BALANCE_OF + abi_encode(["address"], [owner])


def encode_mint(to: str, value: int) -> bytes:
    return SELECTOR_MINT + abi_encode(["address", "uint256"], [to, value])


def encode_authorization_state(authorizer: str, nonce: bytes) -> bytes:
    return SELECTOR_AUTHORIZATION_STATE + abi_encode(["address", "bytes32"], [authorizer, nonce])


def encode_constructor_args(name: str, symbol: str, version: str) -> bytes:
    return bytes(abi_encode(["string", "string", "string"], [name, symbol, version]))


def decode_uint(data: bytes) -> int:
    if len(data) != 32:
        raise ChainError(f"expected one 32-byte word, got {len(data)} bytes")
    return int.from_bytes(data, "big")


def decode_bool(data: bytes) -> bool:
    word = decode_uint(data)
    if word not in (0, 1):
        raise ChainError("expected an ABI bool")
    return word == 1


def contract_address(deployer: str, nonce: int) -> str:
    """Address of the contract `deployer` creates with its `nonce`-th transaction."""
    import rlp  # a dependency of eth-account; local import keeps it out of the API

    encoded = rlp.encode([bytes.fromhex(deployer[2:]), nonce])
    return str(to_checksum_address(keccak(encoded)[12:]))


# ------------------------------------------------------------ fallback transaction


@dataclass(frozen=True)
class UnsignedTransaction:
    """An EIP-1559 (type 2) transaction zpay issues for the user to sign."""

    chain_id: int
    sender: str
    nonce: int
    to: str
    value: int
    data: bytes
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def to_json(self) -> dict[str, Any]:
        """JSON-RPC transaction object, as eth_signTransaction takes it."""
        return {
            "type": "0x2",
            "chainId": quantity(self.chain_id),
            "from": self.sender,
            "nonce": quantity(self.nonce),
            "to": self.to,
            "value": quantity(self.value),
            "data": "0x" + self.data.hex(),
            "gas": quantity(self.gas),
            "maxFeePerGas": quantity(self.max_fee_per_gas),
            "maxPriorityFeePerGas": quantity(self.max_priority_fee_per_gas),
            "accessList": [],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnsignedTransaction:
        try:
            return cls(
                chain_id=_uint(data["chainId"], "chainId"),
                sender=checksum(str(data["from"])),
                nonce=_uint(data["nonce"], "nonce"),
                to=checksum(str(data["to"])),
                value=_uint(data["value"], "value"),
                data=_hex_bytes(data["data"], "data"),
                gas=_uint(data["gas"], "gas"),
                max_fee_per_gas=_uint(data["maxFeePerGas"], "maxFeePerGas"),
                max_priority_fee_per_gas=_uint(
                    data["maxPriorityFeePerGas"], "maxPriorityFeePerGas"
                ),
            )
        except (KeyError, InvalidAddress) as exc:
            raise ApprovalMismatch(f"malformed issued transaction: {exc}") from exc

    def as_signable(self) -> dict[str, Any]:
        """The dict eth-account signs (used by tests acting as the user's wallet)."""
        return {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "to": self.to,
            "value": self.value,
            "data": self.data,
            "gas": self.gas,
            "maxFeePerGas": self.max_fee_per_gas,
            "maxPriorityFeePerGas": self.max_priority_fee_per_gas,
            "accessList": [],
        }


ERC20_TRANSFER_GAS = 100_000  # USDC transfer costs ~40-65k; the rest is headroom
NATIVE_TRANSFER_GAS = 21_000


def build_funding_transaction(
    *,
    chain_id: int,
    token_address: str,
    user_wallet: str,
    session_wallet: str,
    amount_base_units: int,
    nonce: int,
    max_fee_per_gas: int,
    max_priority_fee_per_gas: int,
    gas: int | None = None,
) -> UnsignedTransaction:
    require_amount(amount_base_units)
    if is_native(token_address):
        to, value, data = session_wallet, amount_base_units, b""
        default_gas = NATIVE_TRANSFER_GAS
    else:
        to, value = token_address, 0
        data = encode_erc20_transfer(session_wallet, amount_base_units)
        default_gas = ERC20_TRANSFER_GAS
    return UnsignedTransaction(
        chain_id=chain_id,
        sender=user_wallet,
        nonce=nonce,
        to=to,
        value=value,
        data=data,
        gas=default_gas if gas is None else gas,
        max_fee_per_gas=max_fee_per_gas,
        max_priority_fee_per_gas=max_priority_fee_per_gas,
    )


@dataclass(frozen=True)
class CheckedTransaction:
    raw: bytes
    tx_hash: str
    nonce: int


def _parse_raw(signed_transaction: Any) -> bytes:
    if not isinstance(signed_transaction, str) or not signed_transaction.startswith("0x"):
        raise ApprovalMismatch("signed_transaction must be a 0x-prefixed hex string")
    try:
        return bytes.fromhex(signed_transaction[2:])
    except ValueError as exc:
        raise ApprovalMismatch("signed_transaction is not hex") from exc


def check_signed_funding_transaction(
    *, signed_transaction: Any, issued: UnsignedTransaction, user_wallet: str
) -> CheckedTransaction:
    """Decode the user's signed transaction and accept it only if it is the issued one.

    Checked: type 2, chain id, nonce, `to`, `value`, calldata byte for byte (so selector,
    recipient and amount), an empty access list, and the signer. The gas limit and fee
    caps are the user's to choose (they pay them and they cannot move the token); the
    nonce is pinned so that two different signed versions of one approval can never
    both be mined.
    """
    raw = _parse_raw(signed_transaction)
    if not raw or raw[0] != 0x02:
        raise ApprovalMismatch("the signed transaction must be an EIP-1559 (type 2) transaction")
    try:
        tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    except Exception as exc:  # eth-account raises assorted rlp/validation errors
        raise ApprovalMismatch(f"the signed transaction does not decode: {exc}") from exc

    _compare("chainId", issued.chain_id, tx.get("chainId"))
    _compare("nonce", issued.nonce, tx.get("nonce"))
    to = bytes(tx.get("to") or b"")
    if to.hex() != issued.to[2:].lower():
        raise ApprovalMismatch("to differs from the issued transaction")
    _compare("value", issued.value, tx.get("value"))
    data = bytes(tx.get("data") or b"")
    if data != issued.data:
        decoded = decode_erc20_transfer(data)
        expected = decode_erc20_transfer(issued.data)
        if decoded is not None and expected is not None:
            if not same_address(decoded[0], expected[0]):
                raise ApprovalMismatch("the transfer recipient differs from the issued transaction")
            if decoded[1] != expected[1]:
                raise ApprovalMismatch("the transfer amount differs from the issued transaction")
        raise ApprovalMismatch("calldata differs from the issued transaction")
    if tuple(tx.get("accessList") or ()) != ():
        raise ApprovalMismatch("the issued transaction has no access list")

    try:
        sender = str(Account.recover_transaction(raw))
    except Exception as exc:  # malformed signature values surface as various errors
        raise ApprovalSignatureInvalid(f"the transaction signature is invalid: {exc}") from exc
    if not same_address(sender, user_wallet) or not same_address(sender, issued.sender):
        raise ApprovalSignatureInvalid("the transaction is not signed by user_wallet")
    return CheckedTransaction(raw=raw, tx_hash="0x" + keccak(raw).hex(), nonce=issued.nonce)


# ------------------------------------------------------------------ relayer tx


def sign_relayer_transaction(
    secret: bytes,
    *,
    chain_id: int,
    nonce: int,
    to: str | None,
    data: bytes,
    gas: int,
    max_fee_per_gas: int,
    max_priority_fee_per_gas: int,
    value: int = 0,
) -> tuple[bytes, str]:
    """(raw, hash) of a type-2 transaction signed by the relayer (`to=None` deploys)."""
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "value": value,
        "data": data,
        "gas": gas,
        "maxFeePerGas": max_fee_per_gas,
        "maxPriorityFeePerGas": max_priority_fee_per_gas,
        "accessList": [],
    }
    if to is not None:
        tx["to"] = to
    signed = Account.sign_transaction(tx, secret)
    raw = bytes(signed.raw_transaction)
    return raw, "0x" + keccak(raw).hex()


@dataclass(frozen=True)
class DecodedTransaction:
    """The fields of a signed type-2 transaction that re-signing or checking needs."""

    sender: str
    chain_id: int
    nonce: int
    to: str | None
    value: int
    data: bytes
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    tx_hash: str
    raw: bytes


def decode_signed_transaction(raw: bytes) -> DecodedTransaction:
    """Decode signed type-2 bytes (a relayer tx to re-sign with higher fees, or a user's
    fallback approval to send); raises ChainError if they are not that."""
    if not raw or raw[0] != 0x02:
        raise ChainError("not an EIP-1559 (type 2) transaction")
    try:
        tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        sender = str(Account.recover_transaction(raw))
    except Exception as exc:  # eth-account raises assorted rlp/validation errors
        raise ChainError(f"the transaction does not decode: {exc}") from exc
    to = bytes(tx.get("to") or b"")
    return DecodedTransaction(
        sender=sender,
        chain_id=int(tx["chainId"]),
        nonce=int(tx["nonce"]),
        to=str(to_checksum_address(to)) if to else None,
        value=int(tx.get("value") or 0),
        data=bytes(tx.get("data") or b""),
        gas=int(tx["gas"]),
        max_fee_per_gas=int(tx["maxFeePerGas"]),
        max_priority_fee_per_gas=int(tx["maxPriorityFeePerGas"]),
        tx_hash="0x" + keccak(raw).hex(),
        raw=raw,
    )
