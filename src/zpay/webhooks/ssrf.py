"""Keep merchant-supplied webhook URLs from reaching zpay's own network (SSRF).

A URL is acceptable when it is http(s) and every address its host stands for
is public unicast. The host is read exactly as the HTTP client will read it
(``httpx.URL``), then numeric spellings are normalised the way browsers and
libc ``inet_aton`` do (``2130706433``, ``0x7f000001``, ``0177.0.0.1``,
``127.1`` are all 127.0.0.1), so no spelling reaches an address the check
did not see. Hostnames are resolved and refused if *any* address is
disallowed, since the client could connect to any of them.

Checking at creation time (:func:`validate_url`) is only a courtesy to the
merchant: DNS can change afterwards. :func:`resolve_pinned` checks again at
send time and returns the addresses to connect to, so the connection goes to
what was checked (no DNS rebinding).

``allow_private`` opens loopback, RFC 1918, CGNAT, link-local and unique-local
destinations for local development. Unspecified (0.0.0.0/8, ``::``),
multicast and reserved addresses stay refused even then: no webhook receiver
lives there, and 0.0.0.0 is a well-known way to reach localhost in disguise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses as text``; injectable so tests need no real DNS."""

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_THIS_NETWORK: Final = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED_CGNAT: Final = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# Categories no opt-in unlocks: see the module docstring.
_ALWAYS_REFUSED: Final = frozenset({"unspecified", "multicast", "reserved"})

_DECIMAL = re.compile(r"[0-9]+")
_OCTAL = re.compile(r"0[0-7]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")


class UnsafeWebhookUrl(Exception):
    """The URL must not be used as a webhook destination.

    ``code`` is stable for API errors; ``reason`` is a finer, also stable, tag
    for logs: ``invalid_url``, ``scheme``, or the address category
    (``loopback``, ``private``, ``link-local``, ``shared``, ``unspecified``,
    ``multicast``, ``reserved``, ``non-public``).
    """

    code: Final = "webhook_url_not_allowed"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """A checked destination: request ``url``, but connect only to ``addresses``.

    ``url`` keeps the original hostname, so the Host header and TLS server
    name stay those of the merchant's endpoint.
    """

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def ip(self) -> IPAddress:
        return self.addresses[0]


def parse_ipv4_like(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``host`` spells, ``None`` if it is a name; ValueError if malformed.

    Follows the WHATWG URL host parser: a host whose last label is a number is
    an address, each of up to four parts decimal, ``0x`` hex or ``0`` octal,
    the last part filling the remaining bytes (``127.1`` = 127.0.0.1).
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot is allowed, as in "127.0.0.1."
    if not _is_number(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError(f"{host!r} has too many parts for an IPv4 address")
    numbers = [_parse_number(part, host) for part in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is out of range for an IPv4 address")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _is_number(part: str) -> bool:
    return bool(_DECIMAL.fullmatch(part) or _HEX.fullmatch(part))


def _parse_number(part: str, host: str) -> int:
    # Regexes, not bare int(): int() also accepts "_", spaces and non-ASCII digits.
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part) and not (len(part) > 1 and part.startswith("0")):
        return int(part)
    raise ValueError(f"{host!r} is not a valid IPv4 address")


def address_category(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or ``None`` when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Mapped and NAT64 addresses are delivered to the embedded IPv4
        # address, which is therefore the one that matters.
        if ip.ipv4_mapped is not None:
            return address_category(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_category(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and (embedded := address_category(ip.sixtofour)):
            return embedded
    elif ip in _THIS_NETWORK:
        return "unspecified"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_CGNAT, "shared"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "non-public"),
    )
    return next((category for matched, category in checks if matched), None)


def _check_address(ip: IPAddress, host: str, *, allow_private: bool, literal: bool) -> None:
    category = address_category(ip)
    if category is None or (allow_private and category not in _ALWAYS_REFUSED):
        return
    article = "an" if category[0] in "aeiou" else "a"
    where = "webhook URL points to" if literal else f"webhook URL host {host!r} resolves to"
    message = f"{where} {ip}, {article} {category} address"
    if category in _ALWAYS_REFUSED:
        message += "; it can never be a webhook destination"
    else:
        message += (
            "; only public addresses are allowed unless private destinations are"
            " explicitly enabled for local development"
        )
    raise UnsafeWebhookUrl(message, reason=category)


def _parse(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        # httpx refuses some numeric spellings that libc would still resolve
        # (e.g. "0177.0.0.1"); rewrite those to the address they mean and retry.
        rewritten = _rewrite_numeric_host(url)
        if rewritten is not None:
            try:
                return httpx.URL(rewritten)
            except httpx.InvalidURL:
                pass
        raise UnsafeWebhookUrl("webhook URL is not a valid URL", reason="invalid_url") from None


def _rewrite_numeric_host(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        ip = parse_ipv4_like(hostname) if hostname else None
    except ValueError:
        return None
    if hostname is None or ip is None:
        return None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not hostport.lower().startswith(hostname):
        return None
    netloc = f"{userinfo}{at}{ip}{hostport[len(hostname) :]}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class _Parsed:
    url: httpx.URL
    host: str
    port: int
    literal: IPAddress | None


def _parse_checked(url: str, *, allow_private: bool) -> _Parsed:
    """Syntax, scheme and literal-address checks; no DNS."""
    parsed = _parse(url)
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UnsafeWebhookUrl("webhook URL must use http or https", reason="scheme")
    # raw_host is what the connection pool will see: IDNA-encoded, no brackets.
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UnsafeWebhookUrl("webhook URL has no host", reason="invalid_url")
    literal: IPAddress | None
    try:
        if ":" in host:
            literal = ipaddress.IPv6Address(unquote(host).partition("%")[0])
        else:
            literal = parse_ipv4_like(host)
    except ValueError:
        raise UnsafeWebhookUrl(
            f"webhook URL host {host!r} is not a valid address", reason="invalid_url"
        ) from None
    if literal is not None:
        _check_address(literal, host, allow_private=allow_private, literal=True)
        if host != str(literal):
            # Send the canonical spelling so the Host header names the real address.
            parsed = parsed.copy_with(host=str(literal))
            host = parsed.raw_host.decode("ascii")
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    return _Parsed(url=parsed, host=host, port=port, literal=literal)


def check_url_syntax(url: str, *, allow_private: bool) -> str:
    """The canonical URL, after every check that needs no DNS; raises UnsafeWebhookUrl."""
    return str(_parse_checked(url, allow_private=allow_private).url)


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve with ``getaddrinfo`` in the loop's executor, never blocking the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _resolve_checked(
    parsed: _Parsed, *, allow_private: bool, resolver: Resolver | None
) -> tuple[IPAddress, ...]:
    raw = await (resolver or system_resolver)(parsed.host, parsed.port)
    addresses: list[IPAddress] = []
    for text in raw:
        ip = ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 zone id
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{parsed.host} has no addresses")
    for ip in addresses:
        _check_address(ip, parsed.host, allow_private=allow_private, literal=False)
    return tuple(addresses)


async def validate_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> None:
    """Check a URL when an endpoint is created or changed; raises UnsafeWebhookUrl.

    A name that does not resolve yet is accepted: the merchant may create the
    DNS record later, and every send checks again.
    """
    parsed = _parse_checked(url, allow_private=allow_private)
    if parsed.literal is not None:
        return
    try:
        await _resolve_checked(parsed, allow_private=allow_private, resolver=resolver)
    except OSError:
        return


async def resolve_pinned(
    url: str, *, allow_private: bool, resolver: Resolver | None = None
) -> PinnedTarget:
    """Check a URL at send time and return the addresses to connect to.

    Raises UnsafeWebhookUrl when refused, OSError (``socket.gaierror``) when
    the name does not resolve.
    """
    parsed = _parse_checked(url, allow_private=allow_private)
    if parsed.literal is not None:
        addresses: tuple[IPAddress, ...] = (parsed.literal,)
    else:
        addresses = await _resolve_checked(parsed, allow_private=allow_private, resolver=resolver)
    return PinnedTarget(url=parsed.url, host=parsed.host, port=parsed.port, addresses=addresses)
