"""Redaction: text about failures, with the secrets URLs carry masked before people see it.

Webhook and storage URLs often hold their credentials in the query string
(``?token=…``, pre-signed ``?X-Amz-Signature=…``), the fragment, or the user-info
(``https://user:password@host``), and errors quote those URLs verbatim::

    >>> redact_text("POST https://hooks.example.com/x?token=abc&v=2 answered 410 Gone")
    'POST https://hooks.example.com/x?token=***&v=*** answered 410 Gone'

Parameter names stay, so an operator still sees *which* parameter was sent. Secrets in a
URL's path (as some chat webhooks put them) are not recognised.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "redact_json", "redact_text", "redact_url"]

MASK = "***"

# A URL with any scheme, up to whitespace or the quotes and brackets that errors put
# around it. Over-reaching into trailing punctuation only masks it too; stopping early
# could leave part of a secret.
_URL = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")
_PARAM = re.compile(r"([^&;=]*)(=?)([^&;]*)")


def _mask_params(params: str) -> str:
    # "a=1&b" → "a=***&***": each value, or each bare word (it may be the token itself).
    return _PARAM.sub(lambda m: m[0] and (f"{m[1]}={MASK}" if m[2] else MASK), params)


def redact_url(url: str) -> str:
    """``url`` with its query values, fragment values and user-info password masked."""
    scheme, _, rest = url.partition("://")
    rest, hash_sign, fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at_sign, host = authority.rpartition("@")
    if at_sign:
        user, colon, _password = userinfo.partition(":")
        # Without a colon the user-info is usually a token on its own (https://TOKEN@host).
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = _mask_params(query) if question_mark else ""
    fragment = _mask_params(fragment) if hash_sign else ""
    return f"{scheme}://{authority}{slash}{path}{question_mark}{query}{hash_sign}{fragment}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    return _URL.sub(lambda match: redact_url(match[0]), text)


def redact_json(value: Any) -> Any:
    """A copy of the JSON ``value`` with :func:`redact_text` applied to every string in it."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_json(item) for item in value]
    return value
