"""x402 `exact` on EVM (pure): an EIP-3009 `transferWithAuthorization` signed by the
session wallet, which the resource server's facilitator submits (and pays the gas of).

Checked before signing, so a server cannot make the session wallet sign something else
than a plain transfer of the key's token: the asset is the token zpay knows on this chain;
`extra.name`/`extra.version` (the EIP-712 domain the server says) equal that token's
domain; no Permit2 (`extra.assetTransferMethod`). The nonce is derived from the payment's
identity (a retry re-signs the same nonce, which the token accepts once); `validBefore` is
the chain's time plus the requirement's validity. The reference is the one EVM payments
use (`<from>:0x<nonce>:<validBefore>`), so `transfer_status` follows it from the chain
alone: used → captured; unused at a block stamped past validBefore → released.
"""

from __future__ import annotations

from typing import Any

from zpay.chains import evm_refs, evm_tx
from zpay.chains.protocol import ChainError, FlowNotSupported, X402Exact, X402Signed


class X402DomainMismatch(ChainError):
    code = "x402_domain_mismatch"


def x402_nonce(reference_seed: str) -> bytes:
    """Its own space beside payments' and approvals' nonces."""
    return evm_tx.payment_nonce("x402:" + reference_seed)


def check_requirement(exact: X402Exact, domain: evm_tx.TokenDomain) -> None:
    if not evm_tx.same_address(exact.asset, domain.verifying_contract):
        raise X402DomainMismatch("the requirement's asset is not the session key's token")
    method = exact.extra.get("assetTransferMethod")
    if method not in (None, "eip3009"):
        raise FlowNotSupported(f"x402 asset transfer method {str(method)[:40]!r} is not "
                               "supported; zpay signs EIP-3009 authorizations only")
    name, version = exact.extra.get("name"), exact.extra.get("version")
    if name != domain.name or version != domain.version:
        raise X402DomainMismatch(
            "the requirement's EIP-712 domain (extra.name/version) is not the token's "
            f"({domain.name!r}, version {domain.version!r})")


def sign_exact(secret: bytes, *, domain: evm_tx.TokenDomain, source: str, exact: X402Exact,
               now_s: int, reference_seed: str) -> X402Signed:
    check_requirement(exact, domain)
    evm_tx.require_amount(exact.amount_base_units)
    auth = evm_tx.Authorization(
        from_address=evm_tx.checksum(source), to=evm_tx.checksum(exact.pay_to),
        value=exact.amount_base_units, valid_after=0,
        valid_before=now_s + exact.validity_s, nonce=x402_nonce(reference_seed))
    signed = evm_tx.sign_authorization(secret, domain, auth)
    payload: dict[str, Any] = {
        "signature": "0x" + (signed.r + signed.s + bytes([signed.v])).hex(),
        "authorization": auth.to_json(),
    }
    prepared = evm_refs.prepared_authorization(
        domain.chain_id, domain.verifying_contract, signed, evm_refs.payment_reference(auth))
    return X402Signed(payload=payload, prepared=prepared)
