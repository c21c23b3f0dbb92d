"""Sign-in messages a user signs with their wallet: SIWS (Solana) and EIP-4361 (Ethereum).

Both formats are one text with the same fields:

    {domain} wants you to sign in with your {Solana|Ethereum} account:
    {address}

    {statement}

    URI: {uri}
    Version: 1
    Chain ID: {chain id}
    Nonce: {nonce}
    Issued At: {RFC 3339}
    Expiration Time: {RFC 3339}
    Not Before: {RFC 3339}
    Request ID: {request id}
    Resources:
    - {uri}

EIP-4361 (Sign-In with Ethereum) fixes the layout by an ABNF: an optional `scheme://`
before the domain, an EIP-55 address, an empty line, the optional statement followed by a
line break, an empty line, then URI, Version, Chain ID, Nonce and Issued At (required) and
the optional fields in that order. Without a statement the address is followed by THREE
line breaks. SIWS (the Wallet Standard's `solana:signIn`, as Phantom specified it) writes
the statement and the field block each after one empty line, and makes every field
optional. `SignInMessage.text()` renders either exactly; `parse()` reads either back and
refuses anything else (`parse(m.text()) == m`).

`check()` holds the rules of a sign-in that do not need a signature: the domain is this
deployment's, the chain is one it serves, the message is within its validity. Signatures
(ed25519, secp256k1 personal_sign) are checked by `zpay.chains.message_signatures`; the
nonce's single use by the service that stores it.

Pure Python: no I/O, no clock (the caller passes `now`).
"""

from __future__ import annotations

import enum
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from zpay.domain.errors import InvalidRequest, Unauthorized

VERSION = "1"
NONCE_LENGTH = 24  # EIP-4361 asks for at least 8 alphanumerics; 24 of 62 ≈ 143 bits
MAX_LIFETIME = timedelta(minutes=10)  # issued-at may be this old at the latest
CLOCK_SKEW = timedelta(seconds=60)  # a wallet's clock ahead of ours by this much is fine
STATEMENT = ("Sign in to see and revoke the session keys this wallet funded. "
             "Signing is free and moves no funds.")


class Flavor(enum.StrEnum):
    """The account word of the first line: it tells the two formats apart."""

    SOLANA = "Solana"  # SIWS
    ETHEREUM = "Ethereum"  # EIP-4361


class SignInRefused(Unauthorized):
    """The message or its signature does not sign this user in (the `code` says why)."""

    code = "signin_refused"


class SignInMessageInvalid(InvalidRequest):
    code = "signin_message_invalid"


_HEADER = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://)?(?P<domain>[^\s/?#]+)"
    r" wants you to sign in with your (?P<flavor>Solana|Ethereum) account:$")
_ADDRESS = {
    Flavor.SOLANA: re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"),
    Flavor.ETHEREUM: re.compile(r"^0x[0-9a-fA-F]{40}$"),
}
# EIP-4361: statement = *( reserved / unreserved / " " ), i.e. no line break; SIWS likewise.
_STATEMENT = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;= ]+$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?P<frac>\.\d+)?(?:[Zz]|[+\-]\d{2}:\d{2})$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,}$")
_CHAIN_ID = {
    Flavor.SOLANA: re.compile(r"^[A-Za-z0-9:\-]+$"),  # "mainnet", "solana:devnet", …
    Flavor.ETHEREUM: re.compile(r"^[0-9]+$"),
}
_FIELDS = (("uri", "URI"), ("version", "Version"), ("chain_id", "Chain ID"),
           ("nonce", "Nonce"), ("issued_at", "Issued At"),
           ("expiration_time", "Expiration Time"), ("not_before", "Not Before"),
           ("request_id", "Request ID"))
_REQUIRED_BY_EIP4361 = ("uri", "version", "chain_id", "nonce", "issued_at")


def parse_time(value: str) -> datetime:
    """An RFC 3339 date-time (as `toISOString()` writes it, or with an offset) → aware UTC."""
    match = _RFC3339.match(value)
    if match is None:
        raise SignInMessageInvalid(f"{value!r} is not an RFC 3339 date-time")
    text = value.upper()
    frac = match.group("frac")
    if frac and len(frac) > 7:  # datetime keeps microseconds
        text = text.replace(frac, frac[:7], 1)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise SignInMessageInvalid(f"{value!r} is not a valid date-time") from exc


def format_time(value: datetime) -> str:
    """UTC with a `Z`, to the millisecond, as JavaScript's `toISOString()` writes it."""
    if value.tzinfo is None:
        raise ValueError("a sign-in time must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_nonce() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(NONCE_LENGTH))


@dataclass(frozen=True)
class SignInMessage:
    flavor: Flavor
    domain: str
    address: str
    statement: str | None = None
    uri: str | None = None
    version: str | None = None
    chain_id: str | None = None
    nonce: str | None = None
    # Times as written (RFC 3339): the text signed is what counts, so it is kept verbatim.
    issued_at: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()
    scheme: str | None = None  # EIP-4361 only: "https" in "https://example.com wants …"

    def __post_init__(self) -> None:
        _validate(self)

    def text(self) -> str:
        header = (f"{self.scheme}://" if self.scheme else "") + (
            f"{self.domain} wants you to sign in with your {self.flavor.value} account:")
        fields = [f"{label}: {getattr(self, name)}" for name, label in _FIELDS
                  if getattr(self, name) is not None]
        if self.resources:
            fields += ["Resources:", *(f"- {r}" for r in self.resources)]
        if self.flavor is Flavor.ETHEREUM:
            statement = f"{self.statement}\n" if self.statement is not None else ""
            return f"{header}\n{self.address}\n\n{statement}\n" + "\n".join(fields)
        text = f"{header}\n{self.address}"
        if self.statement is not None:
            text += f"\n\n{self.statement}"
        if fields:
            text += "\n\n" + "\n".join(fields)
        return text

    def time(self, name: str) -> datetime | None:
        value = getattr(self, name)
        return None if value is None else parse_time(value)


def _validate(m: SignInMessage) -> None:
    if not isinstance(m.flavor, Flavor):
        raise SignInMessageInvalid("unknown sign-in flavor")
    if m.scheme is not None and m.flavor is not Flavor.ETHEREUM:
        raise SignInMessageInvalid("a scheme before the domain is EIP-4361 only")
    if not m.domain or any(c.isspace() or c in "/?#" for c in m.domain):
        raise SignInMessageInvalid("the domain is not an authority (host[:port])")
    if not _ADDRESS[m.flavor].match(m.address):
        raise SignInMessageInvalid(f"{m.address!r} is not a {m.flavor.value} address")
    if m.statement is not None and not _STATEMENT.match(m.statement):
        raise SignInMessageInvalid("the statement may not contain line breaks or those "
                                   "characters")
    for name, label in _FIELDS:
        value = getattr(m, name)
        if value is not None and (not value or "\n" in value or value != value.strip()):
            raise SignInMessageInvalid(f"{label} is empty or spans lines")
    if m.flavor is Flavor.ETHEREUM:
        missing = [label for name, label in _FIELDS
                   if name in _REQUIRED_BY_EIP4361 and getattr(m, name) is None]
        if missing:
            raise SignInMessageInvalid(f"EIP-4361 requires {', '.join(missing)}")
    if m.version is not None and m.version != VERSION:
        raise SignInMessageInvalid(f"version {m.version!r} is not supported (only {VERSION})")
    if m.nonce is not None and not _NONCE.match(m.nonce):
        raise SignInMessageInvalid("the nonce must be at least 8 letters or digits")
    if m.chain_id is not None and not _CHAIN_ID[m.flavor].match(m.chain_id):
        raise SignInMessageInvalid(f"{m.chain_id!r} is not a {m.flavor.value} chain id")
    for name in ("issued_at", "expiration_time", "not_before"):
        m.time(name)
    for resource in m.resources:
        if not resource or "\n" in resource:
            raise SignInMessageInvalid("a resource is empty or spans lines")


def parse(text: str) -> SignInMessage:
    """Read a SIWS or EIP-4361 message; anything that is not exactly one is refused."""
    if "\r" in text:
        raise SignInMessageInvalid("line breaks must be LF")
    lines = text.split("\n")
    header = _HEADER.match(lines[0])
    if header is None or len(lines) < 2:
        raise SignInMessageInvalid("not a sign-in message (first line)")
    flavor = Flavor(header.group("flavor"))
    address, rest = lines[1], lines[2:]
    statement: str | None = None
    if flavor is Flavor.ETHEREUM:
        # address LF LF [statement LF] LF fields
        if len(rest) < 2 or rest[0] != "":
            raise SignInMessageInvalid("EIP-4361: an empty line must follow the address")
        if rest[1] != "":
            if len(rest) < 3 or rest[2] != "":
                raise SignInMessageInvalid("EIP-4361: an empty line must follow the statement")
            statement, rest = rest[1], rest[3:]
        else:
            rest = rest[2:]
    else:
        # address [LF LF statement] [LF LF fields]
        if rest:
            if rest[0] != "" or len(rest) < 2:
                raise SignInMessageInvalid("SIWS: an empty line must follow the address")
            rest = rest[1:]
            if not rest[0].startswith(tuple(f"{label}: " for _, label in _FIELDS)):
                statement, rest = rest[0], rest[1:]
                if rest:
                    if rest[0] != "" or len(rest) < 2:
                        raise SignInMessageInvalid("SIWS: an empty line must follow the "
                                                   "statement")
                    rest = rest[1:]
    values: dict[str, str] = {}
    position = 0
    for line in rest:
        if line == "Resources:":
            break
        for index in range(position, len(_FIELDS)):
            name, label = _FIELDS[index]
            if line.startswith(f"{label}: "):
                values[name] = line[len(label) + 2:]
                position = index + 1
                break
        else:
            raise SignInMessageInvalid(f"unexpected line {line[:80]!r}")
    resources: list[str] = []
    consumed = len(values)
    if consumed < len(rest):
        tail = rest[consumed + 1:]
        if not tail:
            raise SignInMessageInvalid("Resources: lists nothing")
        for line in tail:
            if not line.startswith("- "):
                raise SignInMessageInvalid(f"unexpected line {line[:80]!r}")
            resources.append(line[2:])
    message = SignInMessage(flavor=flavor, domain=header.group("domain"), address=address,
                            statement=statement, resources=tuple(resources),
                            scheme=header.group("scheme"), **values)
    if message.text() != text:
        raise SignInMessageInvalid("the message is not laid out as its format requires")
    return message


def build(flavor: Flavor, *, domain: str, address: str, uri: str, chain_id: str, nonce: str,
          issued_at: datetime, expires_at: datetime,
          statement: str | None = STATEMENT) -> SignInMessage:
    """The message zpay asks a wallet to sign."""
    return SignInMessage(flavor=flavor, domain=domain, address=address, statement=statement,
                         uri=uri, version=VERSION, chain_id=chain_id, nonce=nonce,
                         issued_at=format_time(issued_at),
                         expiration_time=format_time(expires_at))


def check(message: SignInMessage, *, domain: str, chain_ids: frozenset[str] | set[str],
          now: datetime, max_lifetime: timedelta = MAX_LIFETIME,
          clock_skew: timedelta = CLOCK_SKEW) -> None:
    """Everything but the signature and the nonce's single use. Raises `SignInRefused`
    (or `SignInMessageInvalid` for a message missing what zpay requires)."""
    for name, label in (("uri", "URI"), ("version", "Version"), ("chain_id", "Chain ID"),
                        ("nonce", "Nonce"), ("issued_at", "Issued At")):
        if getattr(message, name) is None:
            raise SignInMessageInvalid(f"the message has no {label}")
    if message.domain.lower() != domain.lower():
        raise SignInRefused(f"this message signs in to {message.domain}, not to {domain}",
                            code="signin_domain_mismatch")
    uri = message.uri or ""
    if urlsplit(uri).netloc.lower() != domain.lower():
        raise SignInRefused("the message's URI is not on this deployment's domain",
                            code="signin_domain_mismatch")
    if message.chain_id not in chain_ids:
        raise SignInRefused(f"chain {message.chain_id!r} is not served here",
                            code="signin_chain_unsupported")
    issued_at = message.time("issued_at")
    assert issued_at is not None
    expires_at = message.time("expiration_time")
    not_before = message.time("not_before")
    if expires_at is not None and now >= expires_at:
        raise SignInRefused("this sign-in message has expired; sign a fresh one",
                            code="signin_expired")
    if now - issued_at > max_lifetime:
        raise SignInRefused("this sign-in message is too old; sign a fresh one",
                            code="signin_expired")
    if issued_at - now > clock_skew or (not_before is not None and now < not_before):
        raise SignInRefused("this sign-in message is not valid yet",
                            code="signin_not_yet_valid")

