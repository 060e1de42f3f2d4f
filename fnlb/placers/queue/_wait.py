"""The overload wait queue: calls that found no free runner wait here for a turn.

A call waits when no runner is believed to have a free slot; the LB calls
``release(n)`` whenever it believes ``n`` slots are free and not yet handed out
(a call of ours ended, a runner reported free slots, a runner joined), and the
queue wakes up to ``n`` waiters in fair order. Nothing here polls or sleeps::

    queue = WaitQueue(QueueConfig(max_queue=10_000), on_event=observe)
    try:
        grant = await queue.wait(app_id, timeout=seconds_left)
    except QueueFull as e:      # at once: e.reason, e.limit, e.pushback_ms
        ...
    except TimeoutError:        # the entry is gone, nothing leaks
        ...
    # try the runners believed free; if all of them refused (our view was stale):
    grant = await queue.wait(app_id, timeout=seconds_left, requeue=grant)
    # when the placed call ends (only matters with per-app in-flight limits):
    grant.done()

    queue.release(believed_free - queue.pending_grants())   # on every capacity event

**Order: start-time fair queueing (SFQ, Goyal et al. 1996), one unit per grant.**
Each app has a FIFO line. The head of a line carries a virtual start tag
``S = max(V, F[app])``, where ``F[app]`` is the finish tag of the app's last
granted turn and ``V`` (virtual time) is the largest start tag granted so far;
granting the head sets ``F[app] = S + 1/weight[app]``. ``release`` grants the
smallest head tag (ties: earlier arrival first), so every app with waiters gets
turns in proportion to its weight however many calls it queued, and an app
alone gets every turn (work-conserving). SFQ rather than deficit round robin
because a grant is one unit of work (a slot), so DRR's quantum buys nothing,
and SFQ needs no round state when apps come and go by the thousand: one heap of
line heads keyed by tag. When the queue empties (end of a busy period) ``V``
jumps to the largest finish tag, as in the paper, and all per-app history is
dropped, so an app returning later starts level with the others.

Tags are given when an entry *becomes the head* of its line, not on arrival.
For a backlogged app that is the same tag SFQ gives on arrival, and it makes a
removal exact: a waiter that times out or is cancelled was never charged, so
the next one in its line takes its place in virtual time.

**Requeue.** A woken waiter that found every believed-free runner taken calls
``wait(..., requeue=grant)``: it goes back to the *front* of its app's line
with its original tag (so the next ``release`` serves it before anything that
came later) and is not charged a second turn. Requeue is never refused for
being over ``max_queue``: the call was admitted already.

**Per-app in-flight limit** (``inflight_limit``/``inflight_limits``): a grant
counts against its app until ``grant.done()``. An app at its limit is skipped
by ``release``, which grants the other apps instead; a ``release`` that could not
use all of ``n`` because every waiter's app was at its limit returns fewer
and remembers nothing. ``done()`` only lowers the count and makes the app
eligible again; it grants nothing (the LB calls ``release`` when the runner
slot actually frees). An app held at its limit earns no credit meanwhile: when
it becomes eligible its head is tagged as if it had just arrived. Only grants are counted,
not calls that never queued. Without limits ``done()`` is a no-op and nothing
is tracked.

**Bounds and shedding.** A new wait beyond ``max_queue_per_app`` waiters of its
app, or ``max_queue`` waiters in all, raises ``QueueFull`` at once with the
limit and ``pushback_ms``: how long the waiters ahead would take to drain at
the recent grant rate (an exponentially weighted rate over ``RATE_WINDOW_S``;
for the per-app bound, the app's fair share of it), clamped to
``[PUSHBACK_MIN_MS, PUSHBACK_MAX_MS]``, ``PUSHBACK_DEFAULT_MS`` before any grant.

**Leaving.** ``timeout`` raises ``TimeoutError``; cancelling the waiting task
raises ``CancelledError``; both remove the entry. A grant that lands just
before the waiting task is cancelled is handed on to the next waiter (counted
``returned``), never lost. ``close(exc_factory)`` wakes every waiter with
``exc_factory()`` and refuses new waits; ``wait_empty()`` helps a drain.

Costs: ``wait`` O(log apps); ``release`` O(log apps) per grant; removal O(1)
amortised (dead entries are skipped lazily and compacted), O(log apps) when it
was the head; requeue O(k) for the k requeued entries ahead in its own line
(almost always 0). Every per-app table drops an app when its line empties (an
idle app's finish tag stays only while it is ahead of ``V``; in-flight counts
while non-zero).

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
import heapq
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from fnlb.errors import ConfigError, FnlbError

__all__ = [
    "Grant",
    "QueueConfig",
    "QueueCounters",
    "QueueEvent",
    "QueueFull",
    "WaitQueue",
]

log = logging.getLogger(__name__)

QueueEvent = Literal[
    "queued",          # a new waiter entered (waited_s 0)
    "requeued",        # a woken waiter came back to the front of its line (waited_s 0)
    "granted",         # a waiter got a turn
    "timeout",         # its timeout passed while it waited
    "cancelled",       # its task was cancelled while it waited
    "returned",        # granted, but cancelled before it resumed: the turn went on
    "closed",          # woken by close()
    "queue_full",      # refused: max_queue
    "app_queue_full",  # refused: max_queue_per_app
]
Observer = Callable[[QueueEvent, str, float], None]

RATE_WINDOW_S = 5.0
# The rate estimate divides by at least this much observed time, so the first
# grants after a quiet spell do not read as an enormous rate.
_RATE_MIN_SPAN_S = 1.0
PUSHBACK_DEFAULT_MS = 1000
PUSHBACK_MIN_MS = 10
PUSHBACK_MAX_MS = 30_000

# Lazily deleted entries and stale heap items are compacted past these slacks.
_DEAD_SLACK = 32
_HEAP_SLACK = 64

_WAITING, _GRANTED, _GONE = 0, 1, 2


class QueueFull(FnlbError):
    """The wait queue is at a bound: shed the call at once (``RESOURCE_EXHAUSTED``).

    ``reason`` is ``"queue_full"`` (``max_queue``) or ``"app_queue_full"``
    (``max_queue_per_app``), ``limit`` that bound, ``pushback_ms`` when a retry
    may find room (for the ``grpc-retry-pushback-ms`` trailer).
    """

    def __init__(self, reason: Literal["queue_full", "app_queue_full"], limit: int,
                 pushback_ms: int, app_id: str = "") -> None:
        if reason == "queue_full":
            msg = f"LB wait queue full: {limit} calls already wait (--max-queue)"
        else:
            msg = (f"LB wait queue full for app {app_id!r}: {limit} of its calls "
                   "already wait (--max-queue-per-app)")
        super().__init__(msg)
        self.reason = reason
        self.limit = limit
        self.pushback_ms = pushback_ms
        self.app_id = app_id


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Bounds, weights and in-flight limits of a ``WaitQueue``.

    ``weights`` and ``inflight_limits`` map app ids to their value; apps not
    named get weight 1.0 and ``inflight_limit`` (``None``: no limit).
    """

    max_queue: int = 10_000
    max_queue_per_app: int = 5_000
    weights: Mapping[str, float] = field(default_factory=dict)
    inflight_limit: int | None = None
    inflight_limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue must be at least 1 (got {self.max_queue})")
        if self.max_queue_per_app < 1:
            raise ConfigError(
                f"--max-queue-per-app must be at least 1 (got {self.max_queue_per_app})")
        for app, w in self.weights.items():
            if not (math.isfinite(w) and w > 0):
                raise ConfigError(f"queue weight of app {app!r} must be a number > 0 (got {w})")
        limits = dict(self.inflight_limits)
        if self.inflight_limit is not None:
            limits[""] = self.inflight_limit
        for app, n in limits.items():
            if n < 1:
                who = f"of app {app!r}" if app else "per app"
                raise ConfigError(f"in-flight limit {who} must be at least 1 (got {n})")
        # Frozen means frozen: callers' dicts may change after this.
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "inflight_limits",
                           MappingProxyType(dict(self.inflight_limits)))

    def weight_of(self, app_id: str) -> float:
        return self.weights.get(app_id, 1.0)

    def limit_of(self, app_id: str) -> int | None:
        return self.inflight_limits.get(app_id, self.inflight_limit)


@dataclass
class QueueCounters:
    """Totals since the queue was made (what the metrics are built from)."""

    queued: int = 0
    requeued: int = 0
    granted: int = 0
    timeouts: int = 0
    cancelled: int = 0
    returned: int = 0
    closed: int = 0
    rejected: dict[str, int] = field(
        default_factory=lambda: {"queue_full": 0, "app_queue_full": 0})


class _Entry:
    """One waiting call. ``tag`` is set once it has been the head of its line."""

    __slots__ = ("app_id", "seq", "tag", "requeued", "state", "future", "arrived", "since")

    def __init__(self, app_id: str, seq: int, now: float,
                 future: asyncio.Future[Grant]) -> None:
        self.app_id = app_id
        self.seq = seq
        self.tag: float | None = None
        self.requeued = False
        self.state = _WAITING
        self.future = future
        self.arrived = now
        self.since = now


class _Line:
    """One app's FIFO line. Removed entries stay (``dead``) until skipped or compacted;
    the front entry is always a live waiter."""

    __slots__ = ("entries", "live", "dead", "finish", "weight")

    def __init__(self, weight: float, finish: float) -> None:
        self.entries: deque[_Entry] = deque()
        self.live = 0
        self.dead = 0
        self.finish = finish
        self.weight = weight

    def skip_dead(self) -> None:
        entries = self.entries
        while entries and entries[0].state != _WAITING:
            entries.popleft()
            self.dead -= 1


class Grant:
    """A turn handed to a waiter. ``done()`` (safe twice) ends it for in-flight limits.

    ``waited_s`` is this stint's wait, ``queued_s`` the wait since the call first
    queued (they differ after a requeue). Usable as a context manager.
    """

    __slots__ = ("app_id", "waited_s", "queued_s", "_queue", "_entry", "_active", "_reused")

    def __init__(self, queue: WaitQueue, entry: _Entry, now: float) -> None:
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


class _GrantRate:
    """Grants per second, exponentially weighted over about ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self._tau = window
        self._sum = 0.0
        self._at = 0.0
        self._since: float | None = None

    def add(self, now: float, k: int) -> None:
        if self._since is None:
            self._since = now
        else:
            self._sum *= math.exp(-(now - self._at) / self._tau)
        self._sum += k
        self._at = now

    def per_second(self, now: float) -> float | None:
        if self._since is None:
            return None
        decayed = self._sum * math.exp(-max(0.0, now - self._at) / self._tau)
        # Normalise by the weight of the time observed so far, so the estimate
        # is unbiased before a whole window has passed.
        span = self._tau * (1.0 - math.exp(-max(0.0, now - self._since) / self._tau))
        return decayed / max(span, _RATE_MIN_SPAN_S)


class WaitQueue:
    """Fair, bounded, capacity-driven admission for calls that found no free runner."""

    def __init__(self, config: QueueConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_event: Observer | None = None) -> None:
        self._cfg = config if config is not None else QueueConfig()
        self._clock = clock
        self._on_event = on_event
        self.counters = QueueCounters()
        self._lines: dict[str, _Line] = {}
        # Every waiter, in the order its stint began: depth, oldest, close().
        self._live: OrderedDict[_Entry, None] = OrderedDict()
        # Heads of eligible lines as (tag, seq, entry); stale items are skipped on pop.
        self._heap: list[tuple[float, int, _Entry]] = []
        self._blocked: set[str] = set()  # apps with waiters, at their in-flight limit
        self._inflight: dict[str, int] = {}  # only apps with a limit, only while > 0
        # Finish tags of apps whose line emptied while still ahead of V.
        self._idle_finish: dict[str, float] = {}
        self._idle_heap: list[tuple[float, str]] = []
        self._vtime = 0.0
        self._seq = 0
        self._active_weight = 0.0
        self._pending = 0
        self._closed: Callable[[], BaseException] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._rate = _GrantRate(RATE_WINDOW_S)

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
        if grant._reused or grant._entry.state != _GRANTED:
            raise ValueError("requeue: the grant was already requeued or handed on")

    def _enter(self, app_id: str, loop: asyncio.AbstractEventLoop) -> _Entry:
        cfg = self._cfg
        line = self._lines.get(app_id)
        if line is not None and line.live >= cfg.max_queue_per_app:
            self._reject("app_queue_full", app_id, cfg.max_queue_per_app)
        if len(self._live) >= cfg.max_queue:
            self._reject("queue_full", app_id, cfg.max_queue)
        self._seq += 1
        entry = _Entry(app_id, self._seq, self._clock(), loop.create_future())
        if line is None:
            line = self._new_line(app_id)
            line.entries.append(entry)
            line.live = 1
            self._push_head(app_id, line)
        else:
            line.entries.append(entry)
            line.live += 1
        self._live[entry] = None
        self._empty.clear()
        self.counters.queued += 1
        self._emit("queued", app_id, 0.0)
        return entry

    def _reenter(self, entry: _Entry, loop: asyncio.AbstractEventLoop) -> _Entry:
        app_id = entry.app_id
        entry.state = _WAITING
        entry.requeued = True
        entry.future = loop.create_future()
        entry.since = self._clock()
        line = self._lines.get(app_id)
        if line is None:
            line = self._new_line(app_id)
        entries = line.entries
        # Requeued entries sit at the front in (tag, seq) order; everything
        # behind them arrived after they were granted, so has a larger tag.
        assert entry.tag is not None
        key = (entry.tag, entry.seq)
        i = 0
        while i < len(entries):
            e = entries[i]
            if not e.requeued or e.tag is None or (e.tag, e.seq) > key:
                break
            i += 1
        if i == 0 and entries and not entries[0].requeued:
            entries[0].tag = None  # no longer the head: re-tagged when it is again
        entries.insert(i, entry)
        line.live += 1
        if i == 0:
            self._push_head(app_id, line)
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

    def _expire(self, entry: _Entry, fut: asyncio.Future[Grant]) -> None:
        if entry.state != _WAITING or entry.future is not fut or fut.done():
            return
        waited = self._clock() - entry.since
        self._remove(entry)
        self.counters.timeouts += 1
        fut.set_exception(TimeoutError(f"no turn in the LB wait queue after {waited:.3f}s"))
        self._emit("timeout", entry.app_id, waited)

    def _abandon(self, entry: _Entry, fut: asyncio.Future[Grant]) -> None:
        """The waiting task was cancelled: leave the queue, and hand on a turn it got."""
        if fut.cancelled():
            if entry.state == _WAITING and entry.future is fut:
                self._cancelled(entry)
            return
        if fut.exception() is not None:
            return  # timed out or closed first; already gone
        grant = fut.result()
        self._pending -= 1
        entry.state = _GONE
        grant._reused = True
        grant.done()
        self.counters.returned += 1
        self._emit("returned", entry.app_id, grant.waited_s)
        self.release(1)

    def _cancelled(self, entry: _Entry) -> None:
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
        heap = self._heap  # compacted in place, never replaced
        while granted < n and heap:
            tag, _, entry = heapq.heappop(heap)
            if entry.state != _WAITING or entry.tag != tag:
                continue
            app_id = entry.app_id
            line = self._lines[app_id]
            if line.entries[0] is not entry or app_id in self._blocked:
                continue
            if entry.future.cancelled():
                # Its task was cancelled and has not run its cleanup yet.
                self._cancelled(entry)
                continue
            self._grant(entry, line, now)
            granted += 1
        if granted:
            self._rate.add(now, granted)
            self._prune_idle()
        self._maybe_idle()
        return granted

    def _grant(self, entry: _Entry, line: _Line, now: float) -> None:
        app_id = entry.app_id
        tag = entry.tag
        assert tag is not None
        line.entries.popleft()
        line.live -= 1
        del self._live[entry]
        entry.state = _GRANTED
        self._vtime = max(self._vtime, tag)
        line.finish = max(line.finish, tag + 1.0 / line.weight)
        if self._cfg.limit_of(app_id) is not None:
            self._inflight[app_id] = self._inflight.get(app_id, 0) + 1
        grant = Grant(self, entry, now)
        entry.future.set_result(grant)
        self._pending += 1
        self.counters.granted += 1
        if line.live == 0:
            self._drop_line(app_id, line)
        else:
            line.skip_dead()
            self._push_head(app_id, line)
        self._emit("granted", app_id, grant.waited_s)

    def _done(self, app_id: str) -> None:
        limit = self._cfg.limit_of(app_id)
        if limit is None:
            return
        left = self._inflight.get(app_id, 0) - 1
        if left > 0:
            self._inflight[app_id] = left
        else:
            self._inflight.pop(app_id, None)
        if app_id in self._blocked and left < limit:
            self._blocked.discard(app_id)
            line = self._lines[app_id]
            head = line.entries[0]
            if not head.requeued:
                head.tag = None  # no credit for the time spent at the limit
            self._push_head(app_id, line)

    # -- per-app lines ---------------------------------------------------------

    def _new_line(self, app_id: str) -> _Line:
        weight = self._cfg.weight_of(app_id)
        line = _Line(weight, self._idle_finish.pop(app_id, -math.inf))
        self._lines[app_id] = line
        self._active_weight += weight
        return line

    def _push_head(self, app_id: str, line: _Line) -> None:
        head = line.entries[0]
        if head.tag is None:
            head.tag = max(self._vtime, line.finish)
        limit = self._cfg.limit_of(app_id)
        if limit is not None and self._inflight.get(app_id, 0) >= limit:
            self._blocked.add(app_id)
            return
        heapq.heappush(self._heap, (head.tag, head.seq, head))
        if len(self._heap) > 2 * len(self._lines) + _HEAP_SLACK:
            self._heap[:] = [(h.tag, h.seq, h) for a, ln in self._lines.items()
                             if a not in self._blocked
                             for h in (ln.entries[0],) if h.tag is not None]
            heapq.heapify(self._heap)

    def _remove(self, entry: _Entry) -> None:
        """Take a waiting entry out of the queue (timeout, cancel)."""
        entry.state = _GONE
        del self._live[entry]
        app_id = entry.app_id
        line = self._lines[app_id]
        line.live -= 1
        if line.live == 0:
            self._drop_line(app_id, line)
        elif line.entries[0] is entry:
            # Never charged: the next in line takes its place in virtual time.
            line.entries.popleft()
            line.skip_dead()
            if app_id not in self._blocked:
                self._push_head(app_id, line)
        else:
            line.dead += 1
            if line.dead > line.live + _DEAD_SLACK:
                line.entries = deque(e for e in line.entries if e.state == _WAITING)
                line.dead = 0
        self._maybe_idle()

    def _drop_line(self, app_id: str, line: _Line) -> None:
        del self._lines[app_id]
        self._blocked.discard(app_id)
        self._active_weight -= line.weight
        if line.finish > self._vtime:
            self._idle_finish[app_id] = line.finish
            heapq.heappush(self._idle_heap, (line.finish, app_id))
            if len(self._idle_heap) > 2 * len(self._idle_finish) + _HEAP_SLACK:
                self._idle_heap[:] = [(f, a) for a, f in self._idle_finish.items()]
                heapq.heapify(self._idle_heap)

    def _prune_idle(self) -> None:
        idle = self._idle_heap
        while idle and idle[0][0] <= self._vtime:
            finish, app_id = heapq.heappop(idle)
            if self._idle_finish.get(app_id) == finish:
                del self._idle_finish[app_id]

    def _maybe_idle(self) -> None:
        """At the end of a busy period V jumps past every finish tag; history goes."""
        if self._live:
            return
        if self._idle_finish:
            self._vtime = max(self._vtime, max(self._idle_finish.values()))
            self._idle_finish.clear()
        self._idle_heap.clear()
        self._heap.clear()
        self._active_weight = 0.0
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
            entry.state = _GONE
            if entry.future.cancelled():  # its task's cleanup has not run yet
                self.counters.cancelled += 1
                left.append(("cancelled", entry.app_id, now - entry.since))
                continue
            entry.future.set_exception(exc_factory())
            self.counters.closed += 1
            left.append(("closed", entry.app_id, now - entry.since))
        self._live.clear()
        self._lines.clear()
        self._blocked.clear()
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
        line = self._lines.get(app_id)
        return 0 if line is None else line.live

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
            ahead, share = len(self._live), 1.0
        else:
            line = self._lines.get(app_id)
            ahead = 0 if line is None else line.live
            weight = self._cfg.weight_of(app_id)
            total = self._active_weight + (0.0 if line is not None else weight)
            share = min(1.0, weight / total) if total > 0 else 1.0
        drain = rate * share
        if drain <= 0:
            return PUSHBACK_MAX_MS
        ms = 1000.0 * ahead / drain
        return int(min(PUSHBACK_MAX_MS, max(PUSHBACK_MIN_MS, ms)))

    def tables(self) -> dict[str, int]:
        """Sizes of the internal tables (tests and debugging: all 0 when idle)."""
        return {
            "lines": len(self._lines),
            "line_entries": sum(len(line.entries) for line in self._lines.values()),
            "waiting": len(self._live),
            "heap": len(self._heap),
            "blocked": len(self._blocked),
            "inflight": len(self._inflight),
            "idle_finish": len(self._idle_finish),
            "idle_heap": len(self._idle_heap),
        }

    def _emit(self, kind: QueueEvent, app_id: str, waited_s: float) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, app_id, waited_s)
        except Exception:
            log.exception("queue observer failed on %s", kind)
