"""Signing and verifying webhooks in the Standard Webhooks format (https://www.standardwebhooks.com).

The webhook queue backend signs every request with :func:`signature_headers`; a
receiver checks it with :func:`verify`. This module needs only the standard library,
so a receiver can copy or import it without Django::

    from modalkit_django.webhooks import WebhookVerificationError, verify

    try:
        message = verify(request.body, request.headers, secret="whsec_…")
    except WebhookVerificationError:
        return HttpResponse(status=400)

A request carries ``webhook-id`` (the delivery's stable ``message_id``: drop
duplicates by it), ``webhook-timestamp`` (unix seconds, fresh on every attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one
per secret, space-separated, so a receiver can rotate secrets without downtime.
Secrets are ``whsec_`` followed by base64 key bytes (:func:`generate_secret`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets as _random
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_HEADER_LENGTH",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
# A signature header for a dozen rotating secrets is under 600 characters. The cap
# bounds the work an unsigned request can cause: each signature is compared with each key.
MAX_HEADER_LENGTH = 8192

Headers = Mapping[str, str] | Mapping[bytes, bytes]

_HEADER_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Only the form a signer writes (str(int)): no sign, spaces, underscores, leading
# zeros or non-ASCII digits, which int() would all accept.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,15}")


class WebhookVerificationError(ValueError):
    """The request is not a genuine, fresh webhook: reject it (answer 400 or 401)."""


def generate_secret() -> str:
    """A new random secret, ``whsec_`` + 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(32)).decode()


def sign(*, msg_id: str, timestamp: int, body: bytes | str, secret: str | Sequence[str]) -> str:
    """The ``webhook-signature`` header value: ``v1,<signature>`` for each secret, space-separated."""
    return " ".join(f"v1,{_signature(key, msg_id, timestamp, _as_bytes(body))}" for key in _keys(secret))


def signature_headers(
    *, msg_id: str, body: bytes | str, secret: str | Sequence[str], timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed now (or at ``timestamp``)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id=msg_id, timestamp=timestamp, body=body, secret=secret),
    }


def verify(
    body: bytes | str,
    headers: Headers,
    secret: str | Sequence[str],
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its JSON body.

    ``headers`` may be any mapping (Django's ``request.headers``, a plain dict in any
    case, names and values as ``str`` or ASCII ``bytes``). ``secret`` may be several
    (during a rotation): one matching signature is enough.

    Anything wrong with the request raises :class:`WebhookVerificationError`, and
    nothing else does: a header missing, empty, not ASCII or over
    ``MAX_HEADER_LENGTH``; a timestamp that is not plain decimal digits or is more than
    ``tolerance`` seconds from ``now``; no matching ``v1`` signature; a body that is
    not a JSON object. A malformed ``secret`` is a configuration mistake, not a bad
    request: it raises :class:`ValueError` before the request is looked at.
    """
    keys = _keys(secret)
    found = _webhook_headers(headers)
    msg_id, raw_timestamp, signatures = (found[name] for name in _HEADER_NAMES)
    if not _TIMESTAMP.fullmatch(raw_timestamp):
        raise WebhookVerificationError(f"webhook-timestamp is not an integer: {raw_timestamp[:40]!r}")
    timestamp = int(raw_timestamp)
    now = time.time() if now is None else now
    if timestamp < now - tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is too old (tolerance {tolerance}s)")
    if timestamp > now + tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is in the future (tolerance {tolerance}s)")

    content = _request_body(body)
    expected = [_signature(key, msg_id, timestamp, content).encode() for key in keys]
    received = [
        value.encode() for version, _, value in (part.partition(",") for part in signatures.split()) if version == "v1"
    ]
    # Compare every pair in constant time; stop early only on a match.
    if not any(hmac.compare_digest(mine, theirs) for mine in expected for theirs in received):
        raise WebhookVerificationError("no signature matches")
    try:
        message = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    if not isinstance(message, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return message


def _webhook_headers(headers: object) -> dict[str, str]:
    items = getattr(headers, "items", None)
    if not callable(items):
        raise WebhookVerificationError(f"the headers are not a mapping but {type(headers).__name__}")
    found: dict[str, object] = {}
    for name, value in items():
        text = _ascii(name)
        if text is not None and text.lower() in _HEADER_NAMES:
            found[text.lower()] = value
    checked = {}
    for name in _HEADER_NAMES:
        if name not in found:
            raise WebhookVerificationError(f"missing header {name}")
        if not isinstance(found[name], str | bytes | bytearray):
            raise WebhookVerificationError(f"{name} is not text but {type(found[name]).__name__}")
        value = _ascii(found[name])
        if value is None:
            raise WebhookVerificationError(f"{name} is not ASCII")
        if not value:
            raise WebhookVerificationError(f"{name} is empty")
        if len(value) > MAX_HEADER_LENGTH:
            raise WebhookVerificationError(f"{name} is longer than {MAX_HEADER_LENGTH} characters")
        checked[name] = value
    return checked


def _ascii(value: object) -> str | None:
    # HTTP headers are ASCII on the wire. Other text can only compare unequal to a
    # signature, and hmac.compare_digest refuses it with TypeError, not False.
    if isinstance(value, bytes | bytearray):
        return value.decode("ascii") if value.isascii() else None
    if isinstance(value, str):
        return value if value.isascii() else None
    return None


def _request_body(body: object) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        try:
            return body.encode()
        except UnicodeEncodeError as exc:  # lone surrogates
            raise WebhookVerificationError("the body is not valid text") from exc
    raise WebhookVerificationError(f"the body is not bytes or text but {type(body).__name__}")


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("no webhook secret given")
    return [_key(one) for one in secrets]


def _key(secret: str) -> bytes:
    # As the reference implementations: the prefix is optional, the rest is base64,
    # its padding optional (they add "==" and let the decoder drop what is extra).
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64 (see generate_secret())") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body
