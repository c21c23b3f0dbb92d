import datetime as dt
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zpay.webhooks import build_headers, generate_secret, verify
from zpay.webhooks.pinning import PinnedTransport
from zpay.webhooks.sender import WebhookSender, send
from zpay.webhooks.ssrf import Resolver

from .receiver import Receiver, Reply

BODY = b'{"type":"payment.succeeded","data":{"amount_base_units":"1500"}}'


def signed_headers(secret: str) -> dict[str, str]:
    return build_headers(secret, "msg_test_1", int(time.time()), BODY)


def resolver_to(*addresses: str, calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        return list(addresses)

    return resolve


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_signed_delivery_is_received_and_verifies() -> None:
    secret = generate_secret()
    with Receiver(Reply(status=204, body=b"")) as rx:
        result = await send(rx.url(), BODY, signed_headers(secret), allow_private=True, timeout_s=5)
    assert result.ok, result.error
    assert (result.status_code, result.error) == (204, None)
    assert result.latency_ms >= 0
    [received] = rx.requests
    assert (received.method, received.path, received.body) == ("POST", "/hook", BODY)
    assert received.headers["content-type"] == "application/json"
    verify(received.body, received.headers, secret)


async def test_redirects_are_not_followed() -> None:
    with Receiver() as target:
        redirect = Reply(status=302, headers={"location": target.url("/stolen")})
        with Receiver(redirect) as rx:
            result = await send(rx.url(), BODY, {}, allow_private=True, timeout_s=5)
    assert result.status_code == 302
    assert result.error is not None and "redirect" in result.error
    assert not result.ok
    assert len(rx.requests) == 1
    assert target.requests == []


async def test_non_2xx_is_a_failure_with_status_and_capped_body() -> None:
    with Receiver(Reply(status=500, body=b"x" * 100_000)) as rx:
        async with WebhookSender(max_response_bytes=1000) as sender:
            result = await sender.send(rx.url(), BODY, {}, allow_private=True, timeout_s=5)
    assert (result.status_code, result.error) == (500, "HTTP 500")
    assert result.response_body == "x" * 1000


async def test_hostname_is_kept_for_host_header_while_connecting_to_checked_ip() -> None:
    with Receiver() as rx:
        result = await send(rx.url(host="localhost"), BODY, {}, allow_private=True, timeout_s=5)
    assert result.ok, result.error
    assert rx.requests[0].headers["host"] == f"localhost:{rx.port}"


async def test_connects_to_the_checked_address_without_resolving_again() -> None:
    # ".invalid" never resolves (RFC 6761), so reaching the receiver proves the
    # connection used the resolver's checked answer, not a second DNS lookup.
    calls: list[str] = []
    async with WebhookSender(resolver=resolver_to("127.0.0.1", calls=calls)) as sender:
        with Receiver() as rx:
            url = rx.url(host="hooks.invalid")
            first = await sender.send(url, BODY, {}, allow_private=True, timeout_s=5)
            second = await sender.send(url, BODY, {}, allow_private=True, timeout_s=5)
    assert first.ok and second.ok, (first.error, second.error)
    assert calls == ["hooks.invalid", "hooks.invalid"]  # one check per send, no more
    assert [r.headers["host"] for r in rx.requests] == [f"hooks.invalid:{rx.port}"] * 2


async def test_falls_through_to_the_next_checked_address() -> None:
    # 127.0.0.2 is loopback but nothing listens there on this port.
    async with WebhookSender(resolver=resolver_to("127.0.0.2", "127.0.0.1")) as sender:
        with Receiver() as rx:
            result = await sender.send(
                rx.url(host="hooks.invalid"), BODY, {}, allow_private=True, timeout_s=5
            )
    assert result.ok, result.error


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "127.1"])
async def test_private_destinations_are_refused_at_send_time(host: str) -> None:
    with Receiver() as rx:
        result = await send(rx.url(host=host), BODY, {}, allow_private=False, timeout_s=5)
    assert result.status_code is None
    assert result.error is not None and "loopback" in result.error
    assert rx.requests == []


async def test_name_rebound_to_private_is_refused_at_send_time() -> None:
    async with WebhookSender(resolver=resolver_to("169.254.169.254")) as sender:
        result = await sender.send(
            "https://hooks.example/", BODY, {}, allow_private=False, timeout_s=5
        )
    assert result.status_code is None
    assert result.error is not None and "169.254.169.254" in result.error


async def test_network_errors_are_reported_without_credentials() -> None:
    url = f"http://merchant:s3cret-pw@127.0.0.1:{closed_port()}/hook"
    result = await send(url, BODY, {}, allow_private=True, timeout_s=5)
    assert result.status_code is None
    assert result.error is not None and "ConnectError" in result.error
    assert "s3cret-pw" not in result.error


async def test_timeout_is_a_failed_delivery() -> None:
    with Receiver(Reply(delay_s=2)) as rx:
        result = await send(rx.url(), BODY, {}, allow_private=True, timeout_s=0.3)
    assert (result.status_code, result.error) == (None, "timed out after 0.3s")
    assert 250 <= result.latency_ms < 2000


async def test_unresolvable_name_is_a_failed_delivery() -> None:
    result = await send("https://hooks.invalid/", BODY, {}, allow_private=False, timeout_s=5)
    assert result.status_code is None
    assert result.error


async def test_transport_refuses_to_connect_without_a_checked_target() -> None:
    # Fail closed: a request that skipped the check must not fall back to DNS.
    with Receiver() as rx:
        async with httpx.AsyncClient(transport=PinnedTransport()) as client:
            with pytest.raises(httpx.ConnectError, match="no checked address"):
                await client.post(rx.url(), content=BODY)
    assert rx.requests == []


def make_tls(tmp_path: Path, dns_name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only that server's certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_tls_uses_the_original_hostname_for_sni_and_certificate(tmp_path: Path) -> None:
    server_tls, client_tls = make_tls(tmp_path, "localhost")
    with Receiver(tls=server_tls) as rx:
        async with WebhookSender(verify=client_tls) as sender:
            result = await sender.send(
                rx.url(host="localhost"), BODY, {}, allow_private=True, timeout_s=5
            )
    assert result.ok, result.error
    assert rx.server_names == ["localhost"]
    assert rx.requests[0].headers["host"] == f"localhost:{rx.port}"


async def test_tls_certificate_must_match_the_hostname_not_the_ip(tmp_path: Path) -> None:
    server_tls, client_tls = make_tls(tmp_path, "localhost")
    with Receiver(tls=server_tls) as rx:
        async with WebhookSender(verify=client_tls, resolver=resolver_to("127.0.0.1")) as sender:
            result = await sender.send(
                rx.url(host="hooks.invalid"), BODY, {}, allow_private=True, timeout_s=5
            )
    assert result.status_code is None
    assert result.error is not None and "certificate" in result.error.lower()
    assert rx.requests == []
