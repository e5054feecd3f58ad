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
import secrets as _random
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"


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
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its JSON body.

    ``headers`` may be any mapping (Django's ``request.headers``, a plain dict in any
    case). ``secret`` may be several (during a rotation): one matching signature is
    enough. Raises :class:`WebhookVerificationError` when a header is missing, the
    timestamp is more than ``tolerance`` seconds from ``now``, no signature matches, or
    the body is not a JSON object.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        raw_timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from exc
    try:
        timestamp = int(raw_timestamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"webhook-timestamp is not an integer: {raw_timestamp!r}") from exc
    now = time.time() if now is None else now
    if timestamp < now - tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is too old (tolerance {tolerance}s)")
    if timestamp > now + tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is in the future (tolerance {tolerance}s)")

    content = _as_bytes(body)
    expected = [_signature(key, msg_id, timestamp, content) for key in _keys(secret)]
    received = [value for version, _, value in (part.partition(",") for part in signatures.split()) if version == "v1"]
    # Compare every pair in constant time; stop early only on a match.
    if not any(hmac.compare_digest(mine, theirs) for mine in expected for theirs in received):
        raise WebhookVerificationError("no signature matches")
    try:
        message = json.loads(content)
    except ValueError as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    if not isinstance(message, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return message


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("no webhook secret given")
    return [_key(one) for one in secrets]


def _key(secret: str) -> bytes:
    # As the reference implementations: the prefix is optional, the rest is base64.
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
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
