"""The subcommand that changes an API key: grant (and take back) the queues it may name."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ..jobs.keys import find_api_keys, grant_queues
from ..models import ApiKey
from .outcome import Outcome
from .progress import Progress

__all__ = ["grant"]


def grant(options: dict[str, Any], progress: Progress) -> Outcome:
    found = find_api_keys(key=options["key"])
    if not found:
        raise CommandError(f"No API key {options['key']!r}: name it by its prefix, as the admin lists it (mk_AbC123).")
    if len(found) > 1:
        owners = ", ".join(f"{key.name} of {key.owner}" for key in found)
        raise CommandError(f"{len(found)} keys start with {options['key']!r} ({owners}): name it by the whole key.")
    api_key = found[0]
    if options["allowed_queues"] or options["removed_queues"]:
        api_key = grant_queues(
            api_key=api_key, allow=options["allowed_queues"] or (), remove=options["removed_queues"] or ()
        )
    return Outcome(_key_data(api_key), [_describe(api_key)])


def _key_data(api_key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": api_key.prefix,
        "name": api_key.name,
        "owner": str(api_key.owner),
        "revoked": not api_key.is_active,
        "allowed_queues": api_key.allowed_queues,
    }


def _describe(api_key: ApiKey) -> str:
    revoked = " (revoked)" if not api_key.is_active else ""
    queues = ", ".join(api_key.allowed_queues) or "no queue"
    return f"Key {api_key.name!r} ({api_key.prefix}…) of {api_key.owner}{revoked} may send results to: {queues}."
