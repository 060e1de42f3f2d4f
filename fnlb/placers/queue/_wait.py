"""``WaitQueue``, the waiters and their turns: waiting, leaving, granting, closing.

The order of turns is ``_fair``'s, the grant rate and pushback ``_rate``'s;
this module owns each waiter (its future, its timeout) and what the queue
reports.

**Bounds.** A new wait beyond ``max_queue_per_app`` waiters of its app, or
``max_queue`` waiters in all, raises ``QueueFull`` at once with the limit and
``pushback_ms`` (see ``_rate``). A requeue is never refused for a bound.

**Leaving.** ``timeout`` raises ``TimeoutError``; cancelling the waiting task
raises ``CancelledError``; both remove the entry. A grant that lands just
before the waiting task is cancelled is handed on to the next waiter (counted
``returned``), never lost. ``close(exc_factory)`` wakes every waiter with
``exc_factory()`` and refuses new waits; ``wait_empty()`` helps a drain.

Like the rest of the LB the queue lives on one event loop and is not
thread-safe. ``clock`` (monotonic seconds) measures waits and the grant rate;
timeouts use the event loop's timers. The observer ``on_event(kind, app_id,
waited_s)`` runs after each change (so ``depth()`` is already current); it must
not call back into the queue, and an exception it raises is logged, not
propagated. ``waited_s`` is the time of this stint in the queue (since the last
``wait`` began), 0 for ``queued``/``requeued`` and the rejections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from fnlb.placers.queue._config import Observer, QueueConfig, QueueCounters, QueueEvent, QueueFull
from fnlb.placers.queue._fair import GONE, GRANTED, WAITING, Entry, FairLines
from fnlb.placers.queue._rate import PUSHBACK_DEFAULT_MS, RATE_WINDOW_S, GrantRate, drain_time_ms

__all__ = ["Grant", "WaitQueue"]

# The package's one logger, as when it was one module.
log = logging.getLogger("fnlb.placers.queue")


class Grant:
    """A turn handed to a waiter. ``done()`` (safe twice) ends it for in-flight limits.

    ``waited_s`` is this stint's wait, ``queued_s`` the wait since the call first
    queued (they differ after a requeue). Usable as a context manager.
    """

    __slots__ = ("app_id", "waited_s", "queued_s", "_queue", "_entry", "_active", "_reused")

    def __init__(self, queue: WaitQueue, entry: Entry, now: float) -> None:
        self.app_id = entry.app_id
        self.waited_s = now - entry.since
        self.queued_s = now - entry.arrived
        self._queue = queue
        self._entry = entry
        self._active = True
        self._reused = False

    def done(self) -> None:
        if self._active:
            self._active = False
            self._queue._done(self.app_id)

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()



class WaitQueue:
    """Fair, bounded, capacity-driven admission for calls that found no free runner."""

    def __init__(self, config: QueueConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_event: Observer | None = None) -> None:
        self._cfg = config if config is not None else QueueConfig()
        self._clock = clock
        self._on_event = on_event
        self.counters = QueueCounters()
        self._fair = FairLines(self._cfg)
        # Every waiter, in the order its stint began: depth, oldest, close().
        self._live: OrderedDict[Entry, None] = OrderedDict()
        self._seq = 0
        self._pending = 0
        self._closed: Callable[[], BaseException] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._rate = GrantRate(RATE_WINDOW_S)

    @property
    def config(self) -> QueueConfig:
        return self._cfg

    # -- waiting ---------------------------------------------------------------

    async def wait(self, app_id: str, timeout: float | None = None, *,
                   requeue: Grant | None = None) -> Grant:
        """Wait for a fair turn of ``app_id``; ``requeue=grant`` re-enters at the front.

        Raises ``QueueFull`` at once when over a bound, ``TimeoutError`` after
        ``timeout`` seconds, the ``close()`` error once closed. Requeueing ends
        the old grant (``done()``) and is refused (``ValueError``) for a grant of
        another queue or app, or one already requeued.
        """
        if requeue is not None:
            self._check_requeue(app_id, requeue)
            requeue._reused = True
            requeue.done()
        if self._closed is not None:
            raise self._closed()
        loop = asyncio.get_running_loop()
        if requeue is not None:
            entry = self._reenter(requeue._entry, loop)
        else:
            entry = self._enter(app_id, loop)
        fut = entry.future
        handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            if timeout <= 0:
                self._expire(entry, fut)
            else:
                handle = loop.call_later(timeout, self._expire, entry, fut)
        try:
            grant = await fut
        except asyncio.CancelledError:
            self._abandon(entry, fut)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        self._pending -= 1
        return grant

    def _check_requeue(self, app_id: str, grant: Grant) -> None:
        if grant._queue is not self:
            raise ValueError("requeue: the grant belongs to another queue")
        if grant.app_id != app_id:
            raise ValueError(f"requeue: the grant is of app {grant.app_id!r}, not {app_id!r}")
        if grant._reused or grant._entry.state != GRANTED:
            raise ValueError("requeue: the grant was already requeued or handed on")

    def _enter(self, app_id: str, loop: asyncio.AbstractEventLoop) -> Entry:
        cfg = self._cfg
        if self._fair.depth(app_id) >= cfg.max_queue_per_app:
            self._reject("app_queue_full", app_id, cfg.max_queue_per_app)
        if len(self._live) >= cfg.max_queue:
            self._reject("queue_full", app_id, cfg.max_queue)
        self._seq += 1
        entry = Entry(app_id, self._seq, self._clock(), loop.create_future())
        self._fair.append(entry)
        self._live[entry] = None
        self._empty.clear()
        self.counters.queued += 1
        self._emit("queued", app_id, 0.0)
        return entry

    def _reenter(self, entry: Entry, loop: asyncio.AbstractEventLoop) -> Entry:
        app_id = entry.app_id
        entry.state = WAITING
        entry.requeued = True
        entry.future = loop.create_future()
        entry.since = self._clock()
        self._fair.put_back(entry)
        self._live[entry] = None
        self._empty.clear()
        self.counters.requeued += 1
        self._emit("requeued", app_id, 0.0)
        return entry

    def _reject(self, reason: Literal["queue_full", "app_queue_full"], app_id: str,
                limit: int) -> None:
        pushback = self.pushback_ms(app_id if reason == "app_queue_full" else None)
        self.counters.rejected[reason] += 1
        self._emit(reason, app_id, 0.0)
        raise QueueFull(reason, limit, pushback, app_id)

    def _expire(self, entry: Entry, fut: asyncio.Future[Grant]) -> None:
        if entry.state != WAITING or entry.future is not fut or fut.done():
            return
        waited = self._clock() - entry.since
        self._remove(entry)
        self.counters.timeouts += 1
        fut.set_exception(TimeoutError(f"no turn in the LB wait queue after {waited:.3f}s"))
        self._emit("timeout", entry.app_id, waited)

    def _abandon(self, entry: Entry, fut: asyncio.Future[Grant]) -> None:
        """The waiting task was cancelled: leave the queue, and hand on a turn it got."""
        if fut.cancelled():
            if entry.state == WAITING and entry.future is fut:
                self._cancelled(entry)
            return
        if fut.exception() is not None:
            return  # timed out or closed first; already gone
        grant = fut.result()
        self._pending -= 1
        entry.state = GONE
        grant._reused = True
        grant.done()
        self.counters.returned += 1
        self._emit("returned", entry.app_id, grant.waited_s)
        self.release(1)

    def _cancelled(self, entry: Entry) -> None:
        waited = self._clock() - entry.since
        self._remove(entry)
        self.counters.cancelled += 1
        self._emit("cancelled", entry.app_id, waited)

    # -- granting --------------------------------------------------------------

    def release(self, n: int) -> int:
        """Grant up to ``n`` waiters in fair order; returns how many were granted.

        Apps at their in-flight limit are passed over; unused capacity is not
        remembered (call again on the next capacity event).
        """
        if n <= 0 or self._closed is not None:
            return 0
        now = self._clock()
        granted = 0
        while granted < n:
            entry = self._fair.next()
            if entry is None:
                break
            if entry.future.cancelled():
                # Its task was cancelled and has not run its cleanup yet.
                self._cancelled(entry)
                continue
            self._grant(entry, now)
            granted += 1
        if granted:
            self._rate.add(now, granted)
            self._fair.prune_idle()
        self._maybe_idle()
        return granted

    def _grant(self, entry: Entry, now: float) -> None:
        self._fair.take(entry)
        del self._live[entry]
        grant = Grant(self, entry, now)
        entry.future.set_result(grant)
        self._pending += 1
        self.counters.granted += 1
        self._emit("granted", entry.app_id, grant.waited_s)

    def _done(self, app_id: str) -> None:
        self._fair.done(app_id)

    def _remove(self, entry: Entry) -> None:
        """Take a waiting entry out of the queue (timeout, cancel)."""
        self._fair.remove(entry)
        del self._live[entry]
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """At the end of a busy period the fair order forgets its history."""
        if self._live:
            return
        self._fair.end_busy_period()
        self._empty.set()

    # -- shutdown --------------------------------------------------------------

    def close(self, exc_factory: Callable[[], BaseException]) -> int:
        """Wake every waiter with ``exc_factory()`` and refuse new waits; returns how many.

        Safe to call again (later waiters are none; the first factory stays).
        Grants already handed out stay valid.
        """
        if self._closed is None:
            self._closed = exc_factory
        now = self._clock()
        left: list[tuple[QueueEvent, str, float]] = []
        for entry in list(self._live):
            entry.state = GONE
            if entry.future.cancelled():  # its task's cleanup has not run yet
                self.counters.cancelled += 1
                left.append(("cancelled", entry.app_id, now - entry.since))
                continue
            entry.future.set_exception(exc_factory())
            self.counters.closed += 1
            left.append(("closed", entry.app_id, now - entry.since))
        self._live.clear()
        self._fair.clear()
        self._maybe_idle()
        for kind, app_id, waited in left:
            self._emit(kind, app_id, waited)
        return sum(kind == "closed" for kind, _, _ in left)

    async def wait_empty(self) -> None:
        """Return once no call waits (for a drain: then ``close()``)."""
        await self._empty.wait()

    # -- introspection ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def depth(self, app_id: str | None = None) -> int:
        """Calls waiting now, in all or of ``app_id`` (never counts removed ones)."""
        if app_id is None:
            return len(self._live)
        return self._fair.depth(app_id)

    def pending_grants(self) -> int:
        """Turns handed out whose waiter has not resumed yet.

        Those waiters will try runners soon: subtract them from the believed-free
        slots before calling ``release`` again.
        """
        return self._pending

    def oldest_wait_s(self) -> float:
        """How long the longest waiter now queued has waited (since its stint began)."""
        for entry in self._live:
            return max(0.0, self._clock() - entry.since)
        return 0.0

    def grant_rate(self) -> float | None:
        """Recent grants per second (``None`` before the first grant)."""
        return self._rate.per_second(self._clock())

    def pushback_ms(self, app_id: str | None = None) -> int:
        """When a retry may find room: the waiters ahead over the recent grant rate.

        With ``app_id``, that app's waiters over its weighted share of the rate.
        """
        rate = self._rate.per_second(self._clock())
        if rate is None:
            return PUSHBACK_DEFAULT_MS
        if app_id is None:
            return drain_time_ms(rate, len(self._live), 1.0)
        return drain_time_ms(rate, self._fair.depth(app_id), self._fair.share(app_id))

    def tables(self) -> dict[str, int]:
        """Sizes of the internal tables (tests and debugging: all 0 when idle)."""
        return {"waiting": len(self._live), **self._fair.tables()}

    def _emit(self, kind: QueueEvent, app_id: str, waited_s: float) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, app_id, waited_s)
        except Exception:
            log.exception("queue observer failed on %s", kind)
