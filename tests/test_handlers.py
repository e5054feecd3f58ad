"""Backends by alias: built once, shared, and closed whatever one of them does."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import override_settings

from modalkit_django.conf import UnknownBackend
from modalkit_django.queues import queues
from modalkit_django.queues.base import BaseQueueBackend, QueueMessage


class ClosesBadly(BaseQueueBackend):
    closed = 0

    async def asend(self, message: QueueMessage) -> str:
        return message.message_id

    def close(self) -> None:
        ClosesBadly.closed += 1
        raise OSError("the socket was already gone")


@pytest.fixture
def two_backends() -> Any:
    backends = {
        **settings.MODALKIT["QUEUES"],
        "bad": {"BACKEND": "tests.test_handlers.ClosesBadly"},
    }
    with override_settings(MODALKIT={**settings.MODALKIT, "QUEUES": backends}):
        yield


@pytest.mark.usefixtures("two_backends")
def test_one_backend_per_alias_shared_and_closed_even_when_another_fails(caplog: pytest.LogCaptureFixture) -> None:
    assert queues["bad"] is queues["bad"]
    memory = queues["memory"]
    assert set(queues.built()) == {queues["bad"], memory}
    ClosesBadly.closed = 0
    queues.close_all()
    async_to_sync(queues.aclose_all)()
    assert ClosesBadly.closed == 2
    failures = [record for record in caplog.records if record.getMessage().startswith("Closing")]
    assert [str(record.exc_info[1]) for record in failures if record.exc_info] == ["the socket was already gone"] * 2


def test_an_unknown_alias_names_the_configured_ones() -> None:
    with pytest.raises(UnknownBackend, match=r"No queue backend 'gone' in MODALKIT\['QUEUES'\] \(have: memory\)"):
        queues["gone"]
