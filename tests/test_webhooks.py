"""Standard Webhooks signatures: the published test vector, malformed requests, the official library."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks.webhooks as official
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modalkit_django.webhooks import (
    MAX_HEADER_LENGTH,
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

# The test vector published with the Standard Webhooks reference implementations.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SIGNED = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}

# Fixed and modest: the suite stays fast and every run tries the same inputs.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# --- Signing and verifying -------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    assert sign(msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY, secret=SECRET) == SIGNATURE
    # The prefix is optional, as in the reference implementations.
    assert sign(msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY, secret=SECRET.removeprefix("whsec_")) == SIGNATURE


def test_verify_accepts_any_matching_signature_and_returns_the_body() -> None:
    headers = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(TIMESTAMP),
        "Webhook-Signature": f"v1,bm9wZQ== {SIGNATURE}",
    }
    assert verify(BODY, headers, SECRET, now=TIMESTAMP + 299) == {"test": 2432232314}


def test_headers_may_be_ascii_bytes_and_other_entries_are_ignored() -> None:
    headers: dict[Any, Any] = {name.encode(): value.encode() for name, value in SIGNED.items()}
    headers.update({0: None, b"x-\xff": b"\xff", "x-caf\xe9": "\xe9"})
    assert verify(BODY, headers, SECRET, now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("changes", "body", "now", "error"),
    [
        ({}, BODY + b" ", TIMESTAMP, "no signature matches"),
        ({"webhook-id": "msg_other"}, BODY, TIMESTAMP, "no signature matches"),
        ({"webhook-signature": "v2," + SIGNATURE[3:]}, BODY, TIMESTAMP, "no signature matches"),
        ({}, BODY, TIMESTAMP + 301, "is too old"),
        ({}, BODY, TIMESTAMP - 301, "is in the future"),
        ({"webhook-timestamp": "soon"}, BODY, TIMESTAMP, "is not an integer"),
        ({"webhook-signature": None}, BODY, TIMESTAMP, "missing header webhook-signature"),
    ],
    ids=["body", "id", "version", "stale", "future", "timestamp", "missing"],
)
def test_verify_rejects_what_was_not_signed_now(
    changes: dict[str, str | None], body: bytes, now: int, error: str
) -> None:
    headers = {name: value for name, value in {**SIGNED, **changes}.items() if value is not None}
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, headers, SECRET, now=now)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        # Each raised TypeError, AttributeError or UnicodeEncodeError before.
        ({"webhook-signature": "v1,\xe9"}, "webhook-signature is not ASCII"),
        ({"webhook-signature": "v1,\ud800"}, "webhook-signature is not ASCII"),
        ({"webhook-signature": SIGNATURE.encode("utf-16")}, "webhook-signature is not ASCII"),
        ({"webhook-id": "\ud800"}, "webhook-id is not ASCII"),
        ({"webhook-signature": None}, "webhook-signature is not text but NoneType"),
        ({"webhook-signature": [SIGNATURE]}, "webhook-signature is not text but list"),
        # Each was accepted before: int() reads all of these as the signed timestamp.
        ({"webhook-timestamp": TIMESTAMP}, "webhook-timestamp is not text but int"),
        ({"webhook-timestamp": f"+{TIMESTAMP}"}, "is not an integer"),
        ({"webhook-timestamp": f" {TIMESTAMP} "}, "is not an integer"),
        ({"webhook-timestamp": f"0{TIMESTAMP}"}, "is not an integer"),
        ({"webhook-timestamp": f"{TIMESTAMP}"[:4] + "_" + f"{TIMESTAMP}"[4:]}, "is not an integer"),
        ({"webhook-timestamp": str(TIMESTAMP).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))}, "not ASCII"),
        # Bounded before any signature is computed.
        ({"webhook-signature": " " * MAX_HEADER_LENGTH + SIGNATURE}, "longer than 8192 characters"),
        ({"webhook-id": ""}, "webhook-id is empty"),
    ],
)
def test_a_malformed_header_raises_only_the_verification_error(changes: dict[str, object], error: str) -> None:
    with pytest.raises(WebhookVerificationError, match=error):
        verify(BODY, {**SIGNED, **changes}, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        ("\ud800", SIGNED, "the body is not valid text"),
        (None, SIGNED, "the body is not bytes or text but NoneType"),
        (BODY, None, "the headers are not a mapping but NoneType"),
        (BODY, "webhook-id: x", "the headers are not a mapping but str"),
    ],
)
def test_a_malformed_body_or_headers_object_raises_only_the_verification_error(
    body: Any, headers: Any, error: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, headers, SECRET, now=TIMESTAMP)


def test_during_a_rotation_each_secret_verifies_alone() -> None:
    old, new = generate_secret(), generate_secret()
    body = b'{"a":1}'
    headers = signature_headers(msg_id="m", body=body, secret=[old, new])
    assert len(headers["webhook-signature"].split()) == 2
    assert verify(body, headers, old) == verify(body, headers, new) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, generate_secret())


@pytest.mark.parametrize(
    ("body", "error"), [(b"[1]", "not a JSON object"), (b"{oops", "not JSON"), (b"[" * 100_000, "not JSON")]
)
def test_a_signed_body_that_is_not_a_json_object_is_refused(body: bytes, error: str) -> None:
    secret = generate_secret()
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, signature_headers(msg_id="m", body=body, secret=secret), secret)


@pytest.mark.parametrize(
    ("secret", "error"), [("whsec_not base64!", "whsec_"), ("whsec_", "empty"), ([], "no webhook secret")]
)
def test_secrets_must_be_base64_keys(secret: str | list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sign(msg_id="m", timestamp=1, body=b"", secret=secret)
    # A bad secret is the receiver's mistake, not the request's: it is not a verification error.
    with pytest.raises(ValueError, match=error) as raised:
        verify(BODY, SIGNED, secret, now=TIMESTAMP)
    assert not isinstance(raised.value, WebhookVerificationError)


def test_a_secret_may_leave_out_the_base64_padding() -> None:
    padded = "whsec_" + base64.b64encode(bytes(range(31))).decode()
    assert padded.endswith("=")
    assert sign(msg_id="m", timestamp=1, body=b"", secret=padded.rstrip("=")) == sign(
        msg_id="m", timestamp=1, body=b"", secret=padded
    )


# --- Properties: whatever arrives, the answer is a verified body or WebhookVerificationError --


def header_value(valid: str) -> st.SearchStrategy[object]:
    """Near misses of ``valid`` (the forms a proxy, client or attacker might send) and junk."""
    text = st.text(max_size=60)
    return st.one_of(
        st.just(valid),
        st.just(valid.encode()),
        text,
        st.binary(max_size=60),
        st.text(st.characters(codec="ascii"), max_size=60),
        st.builds("{}{}{}".format, text, st.just(valid), text),
        st.builds("{}{}".format, st.sampled_from(["v1,", "v1", "v2,", ",", "v1, ", "  "]), text),
        # Over MAX_HEADER_LENGTH: many spaces, many signatures.
        st.sampled_from([" " * MAX_HEADER_LENGTH + valid, "v1,x " * 2000, (f"{valid} " * MAX_HEADER_LENGTH)[:10_000]]),
        st.none(),
        st.integers(),
        st.lists(st.just(valid), max_size=2),
    )


def header_name(name: str) -> st.SearchStrategy[object]:
    return st.sampled_from([name, name.upper(), name.title(), name.encode()])


# Built once: a strategy made inside a draw is validated anew on every example.
VALUES = {name: header_value(valid) for name, valid in SIGNED.items()}
NAMES = {name: header_name(name) for name in SIGNED}
OTHER_HEADERS = st.dictionaries(
    st.one_of(st.text(max_size=20), st.binary(max_size=20)), st.text(max_size=20), max_size=3
)
BODIES = st.one_of(st.just(BODY), st.binary(max_size=60), st.text(max_size=60))


@st.composite
def requests(draw: st.DrawFn) -> tuple[object, dict[object, object]]:
    headers: dict[object, object] = draw(OTHER_HEADERS)
    for name in SIGNED:
        if draw(st.integers(0, 9)):  # mostly present, so the checks past the first are reached
            headers[draw(NAMES[name])] = draw(VALUES[name])
    return draw(BODIES), headers


def as_text(value: object) -> object:
    return value.decode("latin-1") if isinstance(value, bytes) else value


@PROPERTY
@given(requests())
def test_any_request_verifies_or_raises_the_verification_error(sent: tuple[object, dict[object, object]]) -> None:
    body, headers = sent
    try:
        message = verify(body, headers, SECRET, now=TIMESTAMP)  # type: ignore[arg-type]
    except WebhookVerificationError:
        return
    # Verified: then it is the signed request, in one of its equivalent spellings.
    assert message == json.loads(BODY)
    assert as_text(body) == BODY.decode()
    received = {str(as_text(name)).lower(): as_text(value) for name, value in headers.items()}
    assert (received["webhook-id"], received["webhook-timestamp"]) == (MSG_ID, str(TIMESTAMP))
    assert SIGNATURE in str(received["webhook-signature"]).split()


@PROPERTY
@given(st.sampled_from(list(SIGNED)), st.data())
def test_any_other_header_value_is_refused(name: str, data: st.DataObject) -> None:
    value = data.draw(VALUES[name])
    assume(value not in (SIGNED[name], SIGNED[name].encode()))
    assume(not (name == "webhook-signature" and SIGNATURE in str(as_text(value)).split()))
    with pytest.raises(WebhookVerificationError):
        verify(BODY, {**SIGNED, name: value}, SECRET, now=TIMESTAMP)  # type: ignore[dict-item]


@PROPERTY
@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.lists(st.text(), max_size=3)))
def test_headers_that_are_not_a_mapping_are_refused(headers: object) -> None:
    with pytest.raises(WebhookVerificationError, match="not a mapping"):
        verify(BODY, headers, SECRET, now=TIMESTAMP)  # type: ignore[arg-type]


# --- Interop with the official library (standardwebhooks), both ways ---------------------------

INTEROP_SECRETS = {
    "test-vector": SECRET,
    "no-prefix": SECRET.removeprefix("whsec_"),
    "padded": "whsec_" + base64.b64encode(bytes(range(32))).decode(),  # as generate_secret() writes them
    "unpadded": "whsec_" + base64.b64encode(bytes(range(31))).decode().rstrip("="),
}
JOB_BODY = b'{"job_id": "9d4c", "status": "succeeded", "result": {"label": "POSITIVE"}}'


@pytest.mark.parametrize("secret", list(INTEROP_SECRETS.values()), ids=list(INTEROP_SECRETS))
def test_the_official_library_verifies_our_signatures(secret: str) -> None:
    headers = signature_headers(msg_id="msg_1", body=JOB_BODY, secret=secret)  # signed now: it checks the clock
    assert official.Webhook(secret).verify(JOB_BODY, headers) == json.loads(JOB_BODY)
    with pytest.raises(official.WebhookVerificationError):
        official.Webhook(secret).verify(JOB_BODY.replace(b"POSITIVE", b"NEGATIVE"), headers)


@pytest.mark.parametrize("secret", list(INTEROP_SECRETS.values()), ids=list(INTEROP_SECRETS))
def test_we_verify_the_official_librarys_signatures(secret: str) -> None:
    sent = datetime.fromtimestamp(TIMESTAMP, tz=UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": official.Webhook(secret).sign("msg_1", sent, JOB_BODY.decode()),
    }
    assert verify(JOB_BODY, headers, secret, now=TIMESTAMP) == json.loads(JOB_BODY)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(JOB_BODY, {**headers, "webhook-id": "msg_2"}, secret, now=TIMESTAMP)


def test_the_official_library_verifies_each_secret_of_a_rotation() -> None:
    old, new = INTEROP_SECRETS["padded"], INTEROP_SECRETS["test-vector"]
    headers = signature_headers(msg_id="msg_1", body=JOB_BODY, secret=[new, old])
    for secret in (old, new):
        assert official.Webhook(secret).verify(JOB_BODY, headers) == json.loads(JOB_BODY)
