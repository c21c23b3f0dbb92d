import ipaddress
import socket
from collections.abc import Sequence

import pytest

from zpay.webhooks.ssrf import (
    Resolver,
    UnsafeWebhookUrl,
    address_category,
    check_url_syntax,
    parse_ipv4_like,
    resolve_pinned,
    validate_url,
)

LOCAL = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://0x7f.1/",
    "http://127.0.0.1./",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "https://user:pw@192.168.0.10:8443/x?y=1",
]
NEVER = [
    "http://0.0.0.0/",
    "http://0/",
    "http://0.1.2.3/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
]
INVALID = [
    "ftp://example.com/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://127.0.0.1:25/",
    "http:///nohost",
    "not a url",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://0x100000000/",
    "http://1.2.3.08/",
    "http://1..2/",
]
PUBLIC = [
    "https://93.184.215.14/hooks",
    "http://8.8.8.8:8080/",
    "https://[2606:4700:4700::1111]/",
    "https://[::ffff:8.8.8.8]/",
    "https://[64:ff9b::808:808]/",
]


def fake_resolver(*addresses: str, calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(addresses)

    return resolve


@pytest.mark.parametrize("url", LOCAL + NEVER)
async def test_local_and_special_destinations_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as excinfo:
        await validate_url(url, allow_private=False)
    assert excinfo.value.code == "webhook_url_not_allowed"
    assert "address" in str(excinfo.value)
    with pytest.raises(UnsafeWebhookUrl):
        await resolve_pinned(url, allow_private=False)


@pytest.mark.parametrize("url", LOCAL)
async def test_local_destinations_are_allowed_with_the_opt_in(url: str) -> None:
    await validate_url(url, allow_private=True)
    target = await resolve_pinned(url, allow_private=True)
    assert address_category(target.ip) is not None


@pytest.mark.parametrize("url", NEVER)
async def test_unspecified_multicast_reserved_stay_refused_with_the_opt_in(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as excinfo:
        await validate_url(url, allow_private=True)
    assert excinfo.value.reason in {"unspecified", "multicast", "reserved"}


@pytest.mark.parametrize("url", INVALID)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_invalid_urls_are_refused(url: str, allow_private: bool) -> None:
    with pytest.raises(UnsafeWebhookUrl) as excinfo:
        await validate_url(url, allow_private=allow_private)
    assert excinfo.value.reason in {"invalid_url", "scheme"}


@pytest.mark.parametrize("url", PUBLIC)
async def test_public_literals_pass_without_dns(url: str) -> None:
    never_called = fake_resolver("127.0.0.1")
    await validate_url(url, allow_private=False, resolver=never_called)
    target = await resolve_pinned(url, allow_private=False, resolver=never_called)
    assert address_category(target.ip) is None


@pytest.mark.parametrize(
    ("url", "canonical", "port"),
    [
        ("http://2130706433/", "http://127.0.0.1/", 80),
        ("http://0x7f000001:8080/a", "http://127.0.0.1:8080/a", 8080),
        ("http://0177.0.0.1/a?b=c", "http://127.0.0.1/a?b=c", 80),
        ("https://127.1/", "https://127.0.0.1/", 443),
        ("http://u:p@0177.1:81/", "http://u:p@127.0.0.1:81/", 81),
        ("http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", 80),
        ("HTTP://LOCALHOST/A", "http://localhost/A", 80),
    ],
)
async def test_odd_spellings_are_sent_in_canonical_form(
    url: str, canonical: str, port: int
) -> None:
    assert check_url_syntax(url, allow_private=True) == canonical
    target = await resolve_pinned(url, allow_private=True)
    assert str(target.url) == canonical
    assert target.port == port


@pytest.mark.parametrize(
    "spelling",
    ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.1", "0x7f.0.0.1", "0", "1.2.3.4"],
)
def test_ipv4_spellings_match_libc_inet_aton(spelling: str) -> None:
    expected = ipaddress.IPv4Address(socket.inet_aton(spelling))
    assert parse_ipv4_like(spelling) == expected


@pytest.mark.parametrize("host", ["example.com", "localhost", "1.2.3.example", "0x7g.com"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ipv4_like(host) is None


async def test_hostname_resolving_to_loopback_is_refused_without_opt_in() -> None:
    with pytest.raises(UnsafeWebhookUrl) as excinfo:
        await validate_url("http://localhost:9999/hook", allow_private=False)
    assert excinfo.value.reason == "loopback"
    assert "resolves to 127.0.0.1" in str(excinfo.value)
    await validate_url("http://localhost:9999/hook", allow_private=True)
    target = await resolve_pinned("http://localhost:9999/hook", allow_private=True)
    assert (target.host, target.port, target.ip.is_loopback) == ("localhost", 9999, True)


async def test_any_private_address_among_the_answers_refuses_the_name() -> None:
    mixed = fake_resolver("93.184.215.14", "10.0.0.7")
    with pytest.raises(UnsafeWebhookUrl) as excinfo:
        await resolve_pinned("https://hooks.example/", allow_private=False, resolver=mixed)
    assert "10.0.0.7" in str(excinfo.value)


async def test_public_name_pins_every_checked_address() -> None:
    resolver = fake_resolver("93.184.215.14", "2606:4700::1111", "93.184.215.14")
    target = await resolve_pinned("https://hooks.example/x", allow_private=False, resolver=resolver)
    assert target.host == "hooks.example"
    assert target.port == 443
    assert [str(ip) for ip in target.addresses] == ["93.184.215.14", "2606:4700::1111"]
    assert str(target.url) == "https://hooks.example/x"


async def test_unresolvable_names_pass_creation_but_not_sending() -> None:
    nxdomain = fake_resolver()
    await validate_url("https://later.example/", allow_private=False, resolver=nxdomain)
    with pytest.raises(OSError):
        await resolve_pinned("https://later.example/", allow_private=False, resolver=nxdomain)


async def test_idna_names_are_resolved_in_their_ascii_form() -> None:
    calls: list[str] = []
    resolver = fake_resolver("93.184.215.14", calls=calls)
    await resolve_pinned("https://bücher.example/", allow_private=False, resolver=resolver)
    assert calls == ["xn--bcher-kva.example"]
