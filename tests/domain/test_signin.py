"""Sign-in messages: SIWS and EIP-4361 laid out exactly, read back exactly, checked."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zpay.domain import signin
from zpay.domain.signin import Flavor, SignInMessage, SignInMessageInvalid, SignInRefused

NOW = datetime(2026, 11, 29, 13, 0, 0, tzinfo=UTC)
SOL = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
ETH = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"

# The example of EIP-4361 itself (eips.ethereum.org/EIPS/eip-4361), byte for byte.
EIP4361_EXAMPLE = (
    "service.invalid wants you to sign in with your Ethereum account:\n"
    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n"
    "\n"
    "I accept the ServiceOrg Terms of Service: https://service.invalid/tos\n"
    "\n"
    "URI: https://service.invalid/login\n"
    "Version: 1\n"
    "Chain ID: 1\n"
    "Nonce: 32891756\n"
    "Issued At: 2021-09-30T16:25:24Z\n"
    "Resources:\n"
    "- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n"
    "- https://example.com/my-web2-claim.json"
)

# What @solana/wallet-standard-util's createSignInMessageText writes for this input.
SIWS_EXAMPLE = (
    "example.com wants you to sign in with your Solana account:\n"
    f"{SOL}\n"
    "\n"
    "Clicking Sign or Approve only means you have proved this wallet is owned by you.\n"
    "\n"
    "URI: https://example.com\n"
    "Version: 1\n"
    "Chain ID: solana:devnet\n"
    "Nonce: oBbLoEldZs\n"
    "Issued At: 2026-11-29T13:00:00.000Z\n"
    "Expiration Time: 2026-11-29T13:10:00.000Z\n"
    "Request ID: r1"
)


def message(flavor: Flavor = Flavor.SOLANA, **changes: object) -> SignInMessage:
    base = signin.build(flavor, domain="pay.example:8443",
                        address=SOL if flavor is Flavor.SOLANA else ETH,
                        uri="https://pay.example:8443/me",
                        chain_id="solana:localnet" if flavor is Flavor.SOLANA else "31337",
                        nonce="abcDEF123456", issued_at=NOW,
                        expires_at=NOW + timedelta(minutes=10))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def check(m: SignInMessage, now: datetime = NOW, domain: str = "pay.example:8443") -> None:
    signin.check(m, domain=domain, chain_ids={"solana:localnet", "31337"}, now=now)


def test_the_eip4361_example_reads_back_exactly() -> None:
    m = signin.parse(EIP4361_EXAMPLE)
    assert (m.flavor, m.domain, m.address, m.chain_id, m.nonce) == (
        Flavor.ETHEREUM, "service.invalid", ETH, "1", "32891756")
    assert m.statement == "I accept the ServiceOrg Terms of Service: https://service.invalid/tos"
    assert m.issued_at == "2021-09-30T16:25:24Z" and m.expiration_time is None
    assert m.resources == ("ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                           "https://example.com/my-web2-claim.json")
    assert m.text() == EIP4361_EXAMPLE


def test_the_siws_example_reads_back_exactly() -> None:
    m = signin.parse(SIWS_EXAMPLE)
    assert (m.flavor, m.domain, m.address, m.chain_id, m.request_id) == (
        Flavor.SOLANA, "example.com", SOL, "solana:devnet", "r1")
    assert m.time("expiration_time") == NOW + timedelta(minutes=10)
    assert m.text() == SIWS_EXAMPLE


def test_without_a_statement_the_layouts_differ_as_their_specs_say() -> None:
    siwe = message(Flavor.ETHEREUM, statement=None).text()
    siws = message(Flavor.SOLANA, statement=None).text()
    assert f"{ETH}\n\n\nURI: " in siwe  # EIP-4361: address LF LF [statement LF] LF
    assert f"{SOL}\n\nURI: " in siws  # SIWS: address [LF LF statement] LF LF fields
    assert signin.parse(siwe).statement is None and signin.parse(siws).statement is None


def test_an_eip4361_scheme_before_the_domain_is_kept() -> None:
    m = signin.parse("https://" + EIP4361_EXAMPLE)
    assert (m.scheme, m.domain) == ("https", "service.invalid")
    assert m.text() == "https://" + EIP4361_EXAMPLE


def test_what_zpay_asks_to_sign() -> None:
    text = message(Flavor.ETHEREUM).text()
    assert text.splitlines() == [
        "pay.example:8443 wants you to sign in with your Ethereum account:", ETH, "",
        signin.STATEMENT, "", "URI: https://pay.example:8443/me", "Version: 1",
        "Chain ID: 31337", "Nonce: abcDEF123456", "Issued At: 2026-11-29T13:00:00.000Z",
        "Expiration Time: 2026-11-29T13:10:00.000Z"]


@pytest.mark.parametrize("text", [
    EIP4361_EXAMPLE.replace("\n", "\r\n"),  # line breaks are LF
    EIP4361_EXAMPLE + "\n",  # trailing junk
    EIP4361_EXAMPLE.replace("Version: 1", "Version: 2"),
    EIP4361_EXAMPLE.replace("Nonce: 32891756", "Nonce: 1234"),  # EIP-4361: 8+ alphanumerics
    EIP4361_EXAMPLE.replace("Nonce: 32891756\n", ""),  # required by EIP-4361
    EIP4361_EXAMPLE.replace("Chain ID: 1", "Chain ID: mainnet"),
    EIP4361_EXAMPLE.replace("Issued At: 2021-09-30T16:25:24Z", "Issued At: yesterday"),
    EIP4361_EXAMPLE.replace("Version: 1\nChain ID: 1", "Chain ID: 1\nVersion: 1"),  # order
    EIP4361_EXAMPLE.replace("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2", SOL),
    EIP4361_EXAMPLE.replace("your Ethereum account", "your Bitcoin account"),
    EIP4361_EXAMPLE.replace("\n\nURI", "\nURI"),  # the statement's empty line
    EIP4361_EXAMPLE.replace("Resources:\n- ipfs", "Resources:\nipfs"),
    SIWS_EXAMPLE.replace("Request ID: r1", "Request ID: r1\nHello: there"),
    SIWS_EXAMPLE.replace(f"{SOL}\n\n", f"{SOL}\n"),
    SIWS_EXAMPLE.replace(SOL, "not-base58-0OIl"),
    "https://" + SIWS_EXAMPLE,  # a scheme is EIP-4361 only
    "",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(SignInMessageInvalid) as refused:
        signin.parse(text)
    assert refused.value.code == "signin_message_invalid"


def test_a_statement_cannot_smuggle_a_line() -> None:
    with pytest.raises(SignInMessageInvalid):
        message(statement="hello\nURI: https://evil.example")


def test_a_valid_message_passes() -> None:
    check(message())
    check(message(Flavor.ETHEREUM), now=NOW + timedelta(minutes=9))


@pytest.mark.parametrize(("changes", "domain", "code"), [
    ({"domain": "evil.example"}, "pay.example:8443", "signin_domain_mismatch"),
    ({}, "pay.example", "signin_domain_mismatch"),  # the port is part of the domain
    ({"uri": "https://evil.example/me"}, "pay.example:8443", "signin_domain_mismatch"),
    ({"chain_id": "solana:mainnet"}, "pay.example:8443", "signin_chain_unsupported"),
])
def test_another_site_or_chain_is_refused(changes: dict[str, str], domain: str,
                                          code: str) -> None:
    with pytest.raises(SignInRefused) as refused:
        check(message(**changes), domain=domain)
    assert refused.value.code == code


def test_times_are_checked() -> None:
    def code_at(m: SignInMessage, now: datetime) -> str:
        with pytest.raises(SignInRefused) as refused:
            check(m, now=now)
        return refused.value.code

    assert code_at(message(), NOW + timedelta(minutes=10)) == "signin_expired"
    no_expiry = message(expiration_time=None)
    check(no_expiry, now=NOW + timedelta(minutes=10))
    assert code_at(no_expiry, NOW + timedelta(minutes=10, seconds=1)) == "signin_expired"
    assert code_at(message(), NOW - timedelta(minutes=2)) == "signin_not_yet_valid"
    check(message(), now=NOW - timedelta(seconds=30))  # a wallet's clock a little ahead
    later = message(not_before="2026-11-29T13:05:00Z")
    assert code_at(later, NOW) == "signin_not_yet_valid"
    check(later, now=NOW + timedelta(minutes=5))


def test_zpay_requires_a_nonce_and_times_even_where_siws_does_not() -> None:
    bare = SignInMessage(flavor=Flavor.SOLANA, domain="pay.example:8443", address=SOL)
    assert signin.parse(bare.text()) == bare
    with pytest.raises(SignInMessageInvalid):
        check(bare)


def test_times_read_as_wallets_write_them() -> None:
    assert signin.parse_time("2026-11-29T13:00:00Z") == NOW
    assert signin.parse_time("2026-11-29T14:00:00.123456789+01:00") == NOW.replace(
        microsecond=123456)
    assert signin.format_time(NOW) == "2026-11-29T13:00:00.000Z"
    with pytest.raises(SignInMessageInvalid):
        signin.parse_time("2026-11-29 13:00:00")


def test_nonces_are_long_and_fresh() -> None:
    nonces = {signin.new_nonce() for _ in range(100)}
    assert len(nonces) == 100 and all(len(n) == 24 and n.isalnum() for n in nonces)


_TEXT = st.text(alphabet="abcXYZ019-._~:/?#@!$&'()*+,;= ", min_size=1,
                max_size=40).map(str.strip).filter(bool)


@given(flavor=st.sampled_from(list(Flavor)), statement=st.none() | _TEXT,
       request_id=st.none() | _TEXT, resources=st.lists(_TEXT, max_size=3),
       scheme=st.booleans())
def test_every_message_reads_back_as_itself(flavor: Flavor, statement: str | None,
                                            request_id: str | None, resources: list[str],
                                            scheme: bool) -> None:
    m = message(flavor, statement=statement, request_id=request_id,
                resources=tuple(resources),
                scheme="https" if scheme and flavor is Flavor.ETHEREUM else None)
    assert signin.parse(m.text()) == m
