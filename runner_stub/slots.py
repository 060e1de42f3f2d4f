"""Capacity bookkeeping for one runner: execution slots, memory, warm functions.

Pure asyncio logic with no gRPC in it, so the rules can be tested directly:

    pool = SlotPool(slots=4, memory_mb=1024)
    lease = await pool.acquire(128, max_wait=0.010)   # None: busy, NACK the call
    if lease is not None:
        with lease:
            ...                                       # slot and memory held

A call needs one slot *and* its memory at the same time. Waiters are served
strictly first come, first served: a big call at the head of the queue is not
overtaken by small ones behind it, so it cannot starve.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from types import TracebackType

__all__ = ["SlotPool", "Lease", "MemoryTooLarge", "WarmCache"]


class MemoryTooLarge(ValueError):
    """The call asks for more memory than the runner has in total: it can never fit."""


class Lease:
    """One slot plus ``memory_mb`` held by one call. ``release()`` is idempotent."""

    __slots__ = ("_pool", "memory_mb", "_released")

    def __init__(self, pool: SlotPool, memory_mb: int) -> None:
        self._pool = pool
        self.memory_mb = memory_mb
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._give_back(self.memory_mb)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class _Waiter:
    __slots__ = ("memory_mb", "future")

    def __init__(self, memory_mb: int, future: asyncio.Future[Lease | None]) -> None:
        self.memory_mb = memory_mb
        self.future = future


class SlotPool:
    """``slots`` concurrent calls sharing ``memory_mb`` MiB."""

    def __init__(self, slots: int, memory_mb: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if memory_mb < 1:
            raise ValueError(f"memory_mb must be >= 1, got {memory_mb}")
        self.slots_total = slots
        self.memory_mb_total = memory_mb
        self.slots_free = slots
        self.memory_mb_free = memory_mb
        self._waiters: deque[_Waiter] = deque()
        # Called whenever free slots or memory change (Runner/Watch listens).
        self.on_change: Callable[[], None] | None = None

    @property
    def waiting(self) -> int:
        """Calls queued for capacity right now."""
        return sum(1 for w in self._waiters if not w.future.done())

    def _fits(self, memory_mb: int) -> bool:
        return self.slots_free >= 1 and self.memory_mb_free >= memory_mb

    def _take(self, memory_mb: int) -> Lease:
        self.slots_free -= 1
        self.memory_mb_free -= memory_mb
        if self.on_change is not None:
            self.on_change()
        return Lease(self, memory_mb)

    def try_acquire(self, memory_mb: int) -> Lease | None:
        """Take capacity now if it is free and nobody is queued before us; never waits."""
        if memory_mb > self.memory_mb_total:
            raise MemoryTooLarge(
                f"call asks for {memory_mb} MiB of memory, runner has {self.memory_mb_total} MiB"
            )
        if memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0, got {memory_mb}")
        # Queued callers go first; barging in would starve a big call at the head.
        if not self._waiters and self._fits(memory_mb):
            return self._take(memory_mb)
        return None

    async def acquire(self, memory_mb: int, max_wait: float) -> Lease | None:
        """Wait up to ``max_wait`` seconds for a slot and ``memory_mb``; None if none came.

        Raises MemoryTooLarge when the call could never fit. Cancelling the
        waiting task leaves no capacity behind.
        """
        lease = self.try_acquire(memory_mb)
        if lease is not None or max_wait <= 0:
            return lease
        loop = asyncio.get_running_loop()
        waiter = _Waiter(memory_mb, loop.create_future())
        self._waiters.append(waiter)
        # A timer instead of asyncio.wait_for: the grant and the timeout then
        # both resolve the same future, so exactly one of them wins.
        timer = loop.call_later(max_wait, self._expire, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            fut = waiter.future
            if fut.done() and not fut.cancelled():
                # Granted in the same loop turn as we were cancelled: give it back.
                granted = fut.result()
                if granted is not None:
                    granted.release()
            raise
        finally:
            timer.cancel()
            self._forget(waiter)

    def _expire(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_result(None)
        self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        # The head may have changed: whoever is next may fit now.
        self._grant()

    def _give_back(self, memory_mb: int) -> None:
        self.slots_free += 1
        self.memory_mb_free += memory_mb
        if self.on_change is not None:
            self.on_change()
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # cancelled or expired, not yet forgotten
                self._waiters.popleft()
                continue
            if not self._fits(head.memory_mb):
                return
            self._waiters.popleft()
            head.future.set_result(self._take(head.memory_mb))


class WarmCache:
    """The functions a runner keeps warm, least recently used evicted first.

    ``capacity`` 0 keeps nothing warm: every call is a cold start.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()  # last = most recent
        # Called whenever the set of warm keys changes (Runner/Watch listens).
        self.on_change: Callable[[], None] | None = None

    def hit(self, key: str) -> bool:
        """True if ``key`` is warm, and make it the most recently used."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, key: str) -> list[str]:
        """Make ``key`` warm (most recent); return the keys evicted to make room."""
        if self.capacity == 0:
            return [key]
        if key not in self._keys and self.on_change is not None:
            self.on_change()
        self._keys[key] = None
        self._keys.move_to_end(key)
        evicted: list[str] = []
        while len(self._keys) > self.capacity:
            old, _ = self._keys.popitem(last=False)
            evicted.append(old)
        return evicted

    def keys(self) -> list[str]:
        """Warm keys, most recently used first."""
        return list(reversed(self._keys))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
