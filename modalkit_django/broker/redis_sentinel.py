"""Redis Sentinel URLs for the broker and the health check: ``redis+sentinel://``."""

from __future__ import annotations

from urllib.parse import unquote

from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SENTINEL_SCHEME", "sentinel_pool"]

SENTINEL_SCHEME = "redis+sentinel://"


def sentinel_pool(url: str) -> SentinelConnectionPool:
    """Connections to the master of ``redis+sentinel://[:password@]h:p[,h:p…]/service[/db]``."""
    rest = url.removeprefix(SENTINEL_SCHEME)
    credentials, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError(f"A Sentinel URL names its sentinels and service: {SENTINEL_SCHEME}host:26379/mymaster")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        sentinels.append((name or host, int(port) if name else 26379))
    password = unquote(credentials.partition(":")[2]) or None
    sentinel = Sentinel(sentinels)  # type: ignore[no-untyped-call]
    return SentinelConnectionPool(service, sentinel, db=int(db or 0), password=password)  # type: ignore[no-untyped-call]
