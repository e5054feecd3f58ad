"""A queue backend that POSTs each message to an HTTP endpoint, signed as a Standard Webhook.

::

    MODALKIT["QUEUES"]["webhooks"] = {
        "BACKEND": "modalkit_django.queues.webhook.WebhookBackend",
        "OPTIONS": {
            "urls": {"sentiment_results": "https://hooks.example.com/sentiment"},
            "secret": "whsec_…",          # or a list while rotating
        },
    }

The answer decides what happens next: 2xx is sent; any other 4xx but 408 and 429 is
dead at once (the receiver refuses this message, a retry would get the same answer);
everything else (5xx, 408, 429, 3xx, a timeout, no connection) is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from ..exceptions import DeliveryError, ModalkitImproperlyConfigured, PermanentDeliveryError
from ..webhooks import sign, signature_headers
from .base import BaseQueueBackend, QueueMessage
from .clients import LoopLocal

__all__ = ["WebhookBackend"]

_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


class WebhookBackend(BaseQueueBackend):
    """POSTs ``message.body()`` (JSON) to the URL configured for the message's queue name.

    Options:

    ``urls``
        ``{queue name: URL}``: where each queue name is posted.
    ``secret``
        ``whsec_…`` secret(s) the requests are signed with; with a list, each request
        carries one signature per secret (for rotation).
    ``queue_name_urls``
        Also accept a queue name that is itself an ``http(s)://`` URL (default off).
        Queue names come from API clients, so this needs ``allowed_hosts``.
    ``allowed_hosts``
        Host names a queue-name URL may point at: ``"hooks.example.com"``, or
        ``".example.com"`` for the domain and its subdomains (as Django's ``ALLOWED_HOSTS``).
    ``timeout``
        Seconds for connecting, and for each read and write (default 10).
    ``headers``
        Extra request headers, e.g. ``{"Authorization": "Bearer …"}``.
    ``response_id_header``
        The response header whose value is recorded as the delivery's external id
        (default ``x-message-id``); without it, the message id is.
    """

    def __init__(
        self,
        alias: str,
        *,
        secret: str | Sequence[str],
        urls: dict[str, str] | None = None,
        queue_name_urls: bool = False,
        allowed_hosts: Sequence[str] = (),
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        response_id_header: str = "x-message-id",
    ) -> None:
        super().__init__(alias)
        try:
            sign(msg_id="check", timestamp=0, body=b"", secret=secret)
        except ValueError as exc:
            raise ModalkitImproperlyConfigured(f"Queue backend {alias!r}: {exc}") from exc
        self.secret = secret
        self.urls = dict(urls or {})
        for queue_name, url in self.urls.items():
            if urlsplit(url).scheme not in ("http", "https"):
                raise ModalkitImproperlyConfigured(
                    f"Queue backend {alias!r}: the URL for {queue_name!r} is not http(s): {url!r}"
                )
        self.queue_name_urls = queue_name_urls
        self.allowed_hosts = [host.lower() for host in allowed_hosts]
        if queue_name_urls and not self.allowed_hosts:
            raise ModalkitImproperlyConfigured(
                f"Queue backend {alias!r}: queue_name_urls lets API clients choose where results are posted; "
                "set allowed_hosts to the hosts they may name."
            )
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.response_id_header = response_id_header
        self._clients = LoopLocal(self._make_client, lambda client: client.aclose())

    async def asend(self, message: QueueMessage) -> str:
        url = self.url_for(message.queue_name)
        body = message.body().encode()
        headers = {
            **self.headers,
            "content-type": "application/json",
            **signature_headers(msg_id=message.message_id, body=body, secret=self.secret),
        }
        client = await self._clients.get()
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"POST {url} failed: {type(exc).__name__}: {exc}", alias=self.alias, queue_name=message.queue_name
            ) from exc
        if response.is_success:
            return response.headers.get(self.response_id_header) or message.message_id
        error = f"POST {url} answered {response.status_code} {response.reason_phrase}"
        if response.is_client_error and response.status_code not in _RETRYABLE_CLIENT_ERRORS:
            raise PermanentDeliveryError(error, alias=self.alias, queue_name=message.queue_name)
        raise DeliveryError(error, alias=self.alias, queue_name=message.queue_name)

    def url_for(self, queue_name: str) -> str:
        """Where messages for ``queue_name`` are posted; :class:`PermanentDeliveryError` if nowhere."""
        if queue_name in self.urls:
            return self.urls[queue_name]
        if urlsplit(queue_name).scheme in ("http", "https"):
            if not self.queue_name_urls:
                raise PermanentDeliveryError(
                    f"Queue name {queue_name!r} is a URL, but queue_name_urls is off for {self.alias!r}",
                    alias=self.alias,
                    queue_name=queue_name,
                )
            self._check_host(queue_name)
            return queue_name
        raise PermanentDeliveryError(
            f"No webhook URL for queue {queue_name!r} in {self.alias!r} (configured: {', '.join(self.urls) or 'none'})",
            alias=self.alias,
            queue_name=queue_name,
        )

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        # Credentials in the URL would be sent to the host; no legitimate client needs them.
        allowed = not (parts.username or parts.password) and any(
            host == pattern or (pattern.startswith(".") and (host.endswith(pattern) or host == pattern[1:]))
            for pattern in self.allowed_hosts
        )
        if not allowed:
            raise PermanentDeliveryError(
                f"Queue name URL host {host!r} is not in allowed_hosts of {self.alias!r}",
                alias=self.alias,
                queue_name=url,
            )

    def _make_client(self) -> httpx.AsyncClient:
        # Redirects are not followed: a redirect could lead past allowed_hosts.
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            headers={"user-agent": "modalkit-django"},
        )

    def close(self) -> None:
        self._clients.close()

    async def aclose(self) -> None:
        await self._clients.aclose()
