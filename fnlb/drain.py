"""The front door's calls in flight, and its graceful drain.

On SIGTERM the LB keeps its listener open for the whole ``--drain-grace``:
new calls get a clear ``UNAVAILABLE`` ("draining") instead of "connection
refused", calls in flight run on, and calls still running when the grace ends
are cut with a message that says so (not gRPC's "Cancelling all calls")::

    drain = Drain()
    async with drain.admitted(context):   # in a handler: UNAVAILABLE once draining,
        ...                                # and when cut at the end of the grace

    drain.begin()                    # SIGTERM: refuse new calls
    await drain.wait_idle(timeout)   # in-flight calls finish ...
    drain.cut("...")                 # ... or are cut
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from fnlb.errors import ShuttingDown

if TYPE_CHECKING:
    from fnlb.front import Context

__all__ = ["Drain"]


class Drain:
    """Tracks the handlers running now; refuses new ones once draining."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.cut_reason = ""

    def __len__(self) -> int:
        return len(self._running)

    def enter(self) -> asyncio.Task[object] | None:
        """Count the current handler task in; ShuttingDown once draining."""
        if self.draining:
            raise ShuttingDown("LB is draining (shutting down): it takes no new calls; "
                               "retry on another LB")
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
            self._idle.clear()
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        """Count ``task`` out (the one ``enter`` returned: a streaming handler may
        be finalized from another task)."""
        if task is not None:
            self._running.discard(task)
        if not self._running:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def admitted(self, context: Context) -> AsyncIterator[None]:
        """A front-door handler's body: refused once draining, told why when cut."""
        try:
            task = self.enter()
        except ShuttingDown as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        try:
            yield
        except asyncio.CancelledError:
            if self.cut_reason:
                await context.abort(grpc.StatusCode.UNAVAILABLE, self.cut_reason)
            raise
        finally:
            self.leave(task)

    def begin(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """True once no call runs; False if ``timeout`` passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        return self._idle.is_set()

    def cut(self, reason: str) -> int:
        """End every call still running with ``reason``; how many there were."""
        self.cut_reason = reason
        running = list(self._running)
        for task in running:
            task.cancel()
        return len(running)
