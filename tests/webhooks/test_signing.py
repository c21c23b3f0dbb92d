import subprocess
import sys

import pytest

import zpay.webhooks
from zpay.webhooks import WebhookVerificationError, build_headers, generate_secret, sign, verify

# The official Standard Webhooks test vector.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = EXPECTED, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_official_test_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    verify(BODY, headers(), SECRET, now=TIMESTAMP)


def test_str_payload_and_module_level_verify() -> None:
    zpay.webhooks.verify(BODY.decode(), headers(), SECRET, now=TIMESTAMP + 10)


def test_header_names_are_case_insensitive() -> None:
    mixed = {k.upper() if "id" in k else k.title(): v for k, v in headers().items()}
    verify(BODY, mixed, SECRET, now=TIMESTAMP)


def test_any_of_several_signatures_passes() -> None:
    other = sign(generate_secret(), MSG_ID, TIMESTAMP, BODY)
    verify(BODY, headers(f"{other} v1a,ignored {EXPECTED}"), SECRET, now=TIMESTAMP)
    verify(BODY, headers(f"{EXPECTED} {other}"), SECRET, now=TIMESTAMP)


def test_build_headers_signs_with_every_secret() -> None:
    new = generate_secret()
    built = build_headers([SECRET, new], MSG_ID, TIMESTAMP, BODY)
    assert built["webhook-signature"].split() == [EXPECTED, sign(new, MSG_ID, TIMESTAMP, BODY)]
    verify(BODY, built, SECRET, now=TIMESTAMP)
    verify(BODY, built, new, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("payload", "hdrs", "secret", "code"),
    [
        (BODY + b" ", headers(), SECRET, "invalid_signature"),
        (BODY, headers(), generate_secret(), "invalid_signature"),
        (BODY, headers("v2," + EXPECTED[3:]), SECRET, "invalid_signature"),
        (BODY, headers("v1,not-base64 v1,"), SECRET, "invalid_signature"),
        (BODY, headers("v1,dMOpw6k="), SECRET, "invalid_signature"),
        (BODY, {**headers(), "webhook-id": "msg_other"}, SECRET, "invalid_signature"),
        (BODY, {}, SECRET, "missing_headers"),
        (BODY, {"webhook-id": MSG_ID, "webhook-timestamp": "1"}, SECRET, "missing_headers"),
        (BODY, {**headers(), "webhook-timestamp": "soon"}, SECRET, "missing_headers"),
    ],
    ids=[
        "changed-body",
        "wrong-secret",
        "unknown-version",
        "garbage-signature",
        "non-ascii-signature",
        "changed-id",
        "no-headers",
        "no-signature",
        "non-integer-timestamp",
    ],
)
def test_refused(payload: bytes, hdrs: dict[str, str], secret: str, code: str) -> None:
    with pytest.raises(WebhookVerificationError) as excinfo:
        verify(payload, hdrs, secret, now=TIMESTAMP)
    assert excinfo.value.code == code


def test_non_ascii_signature_entry_is_refused_not_crashed() -> None:
    with pytest.raises(WebhookVerificationError) as excinfo:
        verify(BODY, headers("v1,héllo"), SECRET, now=TIMESTAMP)
    assert excinfo.value.code == "invalid_signature"


@pytest.mark.parametrize("offset_s", [-301, 301, -86_400, 86_400])
def test_timestamps_outside_five_minutes_are_refused(offset_s: int) -> None:
    # Signed correctly for its own timestamp: only the clock check can refuse it.
    timestamp = TIMESTAMP + offset_s
    signature = sign(SECRET, MSG_ID, timestamp, BODY)
    with pytest.raises(WebhookVerificationError) as excinfo:
        verify(BODY, headers(signature, timestamp), SECRET, now=TIMESTAMP)
    assert excinfo.value.code == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("offset_s", [-300, 300])
def test_timestamps_at_the_edge_are_accepted(offset_s: int) -> None:
    timestamp = TIMESTAMP + offset_s
    signature = sign(SECRET, MSG_ID, timestamp, BODY)
    verify(BODY, headers(signature, timestamp), SECRET, now=TIMESTAMP)


def test_generated_secret_shape_and_round_trip() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert secret != generate_secret()
    signature = sign(secret, "msg_1", TIMESTAMP, b"{}")
    verify(b"{}", headers(signature) | {"webhook-id": "msg_1"}, secret, now=TIMESTAMP)


def test_bad_secret_is_a_configuration_error_that_does_not_echo_it() -> None:
    with pytest.raises(ValueError) as excinfo:
        sign("whsec_not*base64!", MSG_ID, TIMESTAMP, BODY)
    assert "not*base64" not in str(excinfo.value)


def test_verifying_does_not_import_the_http_stack() -> None:
    # Merchants import zpay.webhooks only to verify; httpx would be dead weight.
    code = "import sys, zpay.webhooks; sys.exit('httpx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
