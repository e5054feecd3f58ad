"""One async client per event loop, for the queue backends that keep connections open."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LoopLocal"]

T = TypeVar("T")


class LoopLocal(Generic[T]):
    """Makes one client per running event loop on first use, and closes it with its loop.

    Async clients (``redis.asyncio``, ``httpx.AsyncClient``) bind their connections to
    the loop that opened them, and a backend sends from more than one: each TaskIQ
    worker's loop, the embedded broker's loop, a short-lived loop per ``async_to_sync``
    call. So each loop gets its own client, closed by :meth:`aclose` on that loop or,
    failing that, when the loop shuts down: the client is held by an async generator,
    which ``asyncio.run`` finalises (``loop.shutdown_asyncgens()``) before closing the
    loop. Nothing is left for the garbage collector to warn about.
    """

    def __init__(self, factory: Callable[[], T], close: Callable[[T], Awaitable[object]]) -> None:
        self._factory = factory
        self._close = close
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        """The running loop's client, made on first use."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._factory()
            holder = self._hold(loop, client)
            # Registered before the first await, so concurrent callers share this client.
            self._clients[loop] = (client, holder)
            # Starting the generator registers it with the loop's asyncgen hooks.
            await anext(holder)
            return client
        return entry[0]

    async def aclose(self) -> None:
        """Close the running loop's client, and ask the other loops to close theirs."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        self.close()
        if entry is not None:
            await entry[1].aclose()

    def close(self) -> None:
        """From any thread: each client is closed on its own loop, which must still run."""
        for loop, (_, holder) in list(self._clients.items()):
            if loop.is_running() and not loop.is_closed():
                self._clients.pop(loop, None)
                asyncio.run_coroutine_threadsafe(holder.aclose(), loop)

    async def _hold(self, loop: asyncio.AbstractEventLoop, client: T) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            self._clients.pop(loop, None)
            await self._close(client)
