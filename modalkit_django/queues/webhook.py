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

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from ..exceptions import DeliveryError, ModalkitImproperlyConfigured, PermanentDeliveryError
from ..webhooks import sign, signature_headers
from .base import BaseQueueBackend, QueueMessage
from .clients import LoopLocal

__all__ = ["WebhookBackend"]

_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name in its ASCII (IDNA) form, or an IP address; no wildcards, no escapes.
_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")


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
        Where a queue-name URL may point: ``"hooks.example.com"``, or ``".example.com"``
        for the domain and its subdomains (as Django's ``ALLOWED_HOSTS``), on the URL
        scheme's default port (443 for https, 80 for http). ``"hooks.example.com:8443"``
        allows that port only; an IPv6 address is written ``"[::1]:8080"``. A URL that
        carries credentials (``user:pass@``) is refused whatever its host.
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
        if isinstance(allowed_hosts, str):
            raise ModalkitImproperlyConfigured(
                f"Queue backend {alias!r}: allowed_hosts must be a list of hosts, not the string {allowed_hosts!r}"
            )
        self.allowed_hosts = [host.lower() for host in allowed_hosts]
        self._allowed = [_parse_allowed_host(alias, host) for host in self.allowed_hosts]
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
            raise PermanentDeliveryError(
                error, alias=self.alias, queue_name=message.queue_name, status_code=response.status_code
            )
        raise DeliveryError(error, alias=self.alias, queue_name=message.queue_name, status_code=response.status_code)

    def url_for(self, queue_name: str) -> str:
        """Where messages for ``queue_name`` are posted; :class:`PermanentDeliveryError` if nowhere."""
        if queue_name in self.urls:
            return self.urls[queue_name]
        scheme, separator, _ = queue_name.partition("://")
        if separator and scheme.strip().lower() in _DEFAULT_PORTS:
            if not self.queue_name_urls:
                raise PermanentDeliveryError(
                    f"Queue name {queue_name!r} is a URL, but queue_name_urls is off for {self.alias!r}",
                    alias=self.alias,
                    queue_name=queue_name,
                )
            self._check_url(queue_name)
            return queue_name
        raise PermanentDeliveryError(
            f"No webhook URL for queue {queue_name!r} in {self.alias!r} (configured: {', '.join(self.urls) or 'none'})",
            alias=self.alias,
            queue_name=queue_name,
        )

    def _check_url(self, queue_name: str) -> None:
        # Parsed as httpx will parse it to connect: a second parser could disagree on the host.
        try:
            url = httpx.URL(queue_name)
        except httpx.InvalidURL as exc:
            raise PermanentDeliveryError(
                f"Queue name {queue_name!r} is not a valid URL: {exc}", alias=self.alias, queue_name=queue_name
            ) from exc
        if url.scheme not in _DEFAULT_PORTS:
            raise PermanentDeliveryError(
                f"Queue name URL {queue_name!r} is not http(s)", alias=self.alias, queue_name=queue_name
            )
        host = url.raw_host.decode("ascii", "replace").lower()
        port = _DEFAULT_PORTS[url.scheme] if url.port is None else url.port
        netloc = url.netloc.decode("ascii", "replace") + ("" if url.port is not None else f":{port}")
        # Credentials in the URL would be sent to the host; no legitimate client needs them.
        if url.userinfo:
            raise PermanentDeliveryError(
                f"Queue name URL for {netloc!r} carries credentials", alias=self.alias, queue_name=queue_name
            )
        # An entry without a port allows the scheme's default one only: an open port
        # of the same host (Redis, an admin console) is another service.
        if not any(
            (host == allowed or (allowed.startswith(".") and (host.endswith(allowed) or host == allowed[1:])))
            and port == (_DEFAULT_PORTS[url.scheme] if allowed_port is None else allowed_port)
            for allowed, allowed_port in self._allowed
        ):
            raise PermanentDeliveryError(
                f"Queue name URL host {netloc!r} is not in allowed_hosts of {self.alias!r}",
                alias=self.alias,
                queue_name=queue_name,
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


def _parse_allowed_host(alias: str, entry: str) -> tuple[str, int | None]:
    """``(host, port)`` of an ``allowed_hosts`` entry; the host keeps a leading dot, the port is None if unnamed."""
    address = entry.removeprefix(".")
    try:
        parts = urlsplit("//" + address)
        port = parts.port
        host = httpx.URL(scheme="https", host=parts.hostname or "").raw_host.decode("ascii")
        valid = parts.netloc == address and "@" not in address and _HOST.fullmatch(host) is not None
    except (ValueError, httpx.InvalidURL):
        valid = False
    if not valid:
        raise ModalkitImproperlyConfigured(
            f"Queue backend {alias!r}: allowed_hosts entry {entry!r} is not a host, '.domain' or 'host:port' "
            "(no scheme, path or wildcard)"
        )
    return ("." + host if entry.startswith(".") else host), port
