"""Blob storage and the loopback HTTP server that stands in for S3.

The SDK uploads payloads over the size threshold with ``BlobCreate`` + HTTP ``PUT``
(checking that the ETag is the MD5 hex of the body) and fetches large outputs with
``BlobGet`` + HTTP ``GET``. The same server answers ``GET /stats`` and ``POST /reset``
so a benchmark can read the fake's counters from another process.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .deployment import new_id
from .stats import StatsRecorder

__all__ = ["BlobStore", "blob_app"]


class BlobStore:
    """Blobs by id; thread-safe because worker threads store large outputs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes | None] = {}

    def create(self) -> str:
        """Reserve an id for an upload that has not happened yet."""
        blob_id = new_id("bl")
        with self._lock:
            self._blobs[blob_id] = None
        return blob_id

    def exists(self, blob_id: str) -> bool:
        with self._lock:
            return blob_id in self._blobs

    def put(self, blob_id: str, data: bytes) -> None:
        with self._lock:
            self._blobs[blob_id] = data

    def get(self, blob_id: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(blob_id)

    def add(self, data: bytes) -> str:
        """Store ``data`` under a new id (the fake's own large outputs)."""
        blob_id = self.create()
        self.put(blob_id, data)
        return blob_id


def blob_app(store: BlobStore, stats: StatsRecorder, stats_json: Callable[[], dict[str, Any]]) -> web.Application:
    """The aiohttp application: ``/blobs/{id}`` (PUT, GET), ``/stats`` and ``/reset``."""

    async def upload(request: web.Request) -> web.Response:
        blob_id = request.match_info["blob_id"]
        if not store.exists(blob_id):
            return web.Response(status=404, text=f"no such upload: {blob_id}")
        body = await request.read()
        md5 = hashlib.md5(body)
        sent_md5 = request.headers.get("Content-MD5")
        if sent_md5 and sent_md5 != base64.b64encode(md5.digest()).decode():
            # S3's wording: the SDK recognises it.
            return web.Response(status=400, text="The Content-MD5 you specified did not match what we received.")
        store.put(blob_id, body)
        stats.add("blob_uploads")
        return web.Response(status=200, headers={"ETag": f'"{md5.hexdigest()}"'})

    async def download(request: web.Request) -> web.Response:
        data = store.get(request.match_info["blob_id"])
        if data is None:
            return web.Response(status=404, text="NoSuchKey")
        stats.add("blob_downloads")
        return web.Response(body=data, content_type="application/octet-stream")

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats_json())

    async def reset(request: web.Request) -> web.Response:
        stats.reset()
        return web.json_response(stats_json())

    app = web.Application(client_max_size=1024**3)
    app.router.add_put("/blobs/{blob_id}", upload)
    app.router.add_get("/blobs/{blob_id}", download)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/reset", reset)
    return app
