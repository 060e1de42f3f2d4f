"""Runner/Watch on the stub: its status pushed on change, coalesced, plus heartbeats.

    feed = StatusFeed(build_status, min_interval=0.1, heartbeat=5.0)
    pool.on_change = feed.changed        # whatever the LB places by changed
    await feed.serve(request, context)   # the Watch RPC's handler
    feed.end()                           # server stopping: streams end with OK

Semantics (protos/fnlb/v1/runner.proto, THE WATCH): the current status at
once; then, after a change, one message no sooner than ``min_interval`` after
the previous one (every change in between rides on it, and a change that
undid itself sends nothing); and the status again after ``heartbeat`` of
silence. ``changed()`` only sets an event per stream: a burst of calls costs
the streams one message per interval, not one per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from fnlb.v1 import runner_pb2

__all__ = ["StatusFeed", "signature"]


def signature(s: runner_pb2.RunnerStatus) -> Hashable:
    """What a watching LB places by: a message is sent only when this changed
    (or as a heartbeat). Counters and timestamps are left out: they change
    with every call and mean nothing to placement."""
    return (s.active, s.slots_free, s.memory_mb_free, frozenset(s.warm_slots), s.draining,
            s.drained, tuple(s.features))


class StatusFeed:
    """The Watch streams of one runner and the change signal they share."""

    def __init__(self, build: Callable[[], runner_pb2.RunnerStatus], *,
                 min_interval: float, heartbeat: float) -> None:
        self._build = build
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._streams: set[asyncio.Event] = set()
        self._ending = False
        self.sent = 0  # messages sent over every stream, for tests and debugging

    @property
    def watchers(self) -> int:
        return len(self._streams)

    def changed(self) -> None:
        """Something a watching LB cares about may have changed: wake every stream."""
        for wake in self._streams:
            wake.set()

    def end(self) -> None:
        """Let every stream end with OK (the server is stopping); new ones end at once."""
        self._ending = True
        self.changed()

    async def serve(self, request: runner_pb2.WatchRequest, context: Any) -> None:
        heartbeat = self.heartbeat
        if request.heartbeat_ms > 0:
            heartbeat = min(heartbeat, request.heartbeat_ms / 1000)
        heartbeat = max(heartbeat, self.min_interval)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._streams.add(wake)
        try:
            msg = self._message(heartbeat)
            await context.write(msg)
            self.sent += 1
            last, sent_at = signature(msg), loop.time()
            while not self._ending:
                try:
                    async with asyncio.timeout_at(sent_at + heartbeat):
                        await wake.wait()
                except TimeoutError:
                    # Silent for a heartbeat: the status as it is.
                    msg = self._message(heartbeat)
                else:
                    if self._ending:
                        break
                    # Coalesce: what changes until the interval is over rides along.
                    gap = sent_at + self.min_interval - loop.time()
                    if gap > 0:
                        await asyncio.sleep(gap)
                    wake.clear()
                    msg = self._message(heartbeat)
                    if signature(msg) == last:
                        continue  # changed and changed back: nothing to say
                await context.write(msg)
                self.sent += 1
                last, sent_at = signature(msg), loop.time()
        finally:
            self._streams.discard(wake)

    def _message(self, heartbeat: float) -> runner_pb2.RunnerStatus:
        msg = self._build()
        msg.watch_heartbeat_ms = round(heartbeat * 1000)
        msg.watch_min_interval_ms = round(self.min_interval * 1000)
        return msg
