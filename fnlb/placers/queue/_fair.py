"""The wait queue's order: one FIFO line per app, turns shared fairly between apps.

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

Costs: ``wait`` O(log apps); ``release`` O(log apps) per grant; removal O(1)
amortised (dead entries are skipped lazily and compacted), O(log apps) when it
was the head; requeue O(k) for the k requeued entries ahead in its own line
(almost always 0). Every per-app table drops an app when its line empties (an
idle app's finish tag stays only while it is ahead of ``V``; in-flight counts
while non-zero).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

from fnlb.placers.queue._config import QueueConfig

if TYPE_CHECKING:
    from fnlb.placers.queue._wait import Grant

__all__ = ["GONE", "GRANTED", "WAITING", "Entry", "FairLines"]

# Lazily deleted entries and stale heap items are compacted past these slacks.
_DEAD_SLACK = 32
_HEAP_SLACK = 64

WAITING, GRANTED, GONE = 0, 1, 2


class Entry:
    """One waiting call. ``tag`` is set once it has been the head of its line."""

    __slots__ = ("app_id", "seq", "tag", "requeued", "state", "future", "arrived", "since")

    def __init__(self, app_id: str, seq: int, now: float,
                 future: asyncio.Future[Grant]) -> None:
        self.app_id = app_id
        self.seq = seq
        self.tag: float | None = None
        self.requeued = False
        self.state = WAITING
        self.future = future
        self.arrived = now
        self.since = now


class _Line:
    """One app's FIFO line. Removed entries stay (``dead``) until skipped or compacted;
    the front entry is always a live waiter."""

    __slots__ = ("entries", "live", "dead", "finish", "weight")

    def __init__(self, weight: float, finish: float) -> None:
        self.entries: deque[Entry] = deque()
        self.live = 0
        self.dead = 0
        self.finish = finish
        self.weight = weight

    def skip_dead(self) -> None:
        entries = self.entries
        while entries and entries[0].state != WAITING:
            entries.popleft()
            self.dead -= 1


class FairLines:
    """The apps' lines and the heap of their heads: who gets the next turn.

    The ``WaitQueue`` owns the waiters (futures, timeouts, counters); this owns
    their order, virtual time and the per-app in-flight counts.
    """

    def __init__(self, config: QueueConfig) -> None:
        self._cfg = config
        self._lines: dict[str, _Line] = {}
        # Heads of eligible lines as (tag, seq, entry); stale items are skipped on pop.
        self._heap: list[tuple[float, int, Entry]] = []
        self._blocked: set[str] = set()  # apps with waiters, at their in-flight limit
        self._inflight: dict[str, int] = {}  # only apps with a limit, only while > 0
        # Finish tags of apps whose line emptied while still ahead of V.
        self._idle_finish: dict[str, float] = {}
        self._idle_heap: list[tuple[float, str]] = []
        self._vtime = 0.0
        self._active_weight = 0.0

    def depth(self, app_id: str) -> int:
        """Calls of ``app_id`` waiting in its line."""
        line = self._lines.get(app_id)
        return 0 if line is None else line.live

    def share(self, app_id: str) -> float:
        """The part of the turns ``app_id`` gets while the apps now waiting (and it) wait."""
        line = self._lines.get(app_id)
        weight = self._cfg.weight_of(app_id)
        total = self._active_weight + (0.0 if line is not None else weight)
        return min(1.0, weight / total) if total > 0 else 1.0

    # -- entering and leaving ----------------------------------------------------

    def append(self, entry: Entry) -> None:
        """A new waiter joins the back of its app's line."""
        app_id = entry.app_id
        line = self._lines.get(app_id)
        if line is None:
            line = self._new_line(app_id)
            line.entries.append(entry)
            line.live = 1
            self._push_head(app_id, line)
        else:
            line.entries.append(entry)
            line.live += 1

    def put_back(self, entry: Entry) -> None:
        """A requeued waiter goes back to the front of its line, with its tag."""
        app_id = entry.app_id
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

    def remove(self, entry: Entry) -> None:
        """Take a waiting entry out of its line (timeout, cancel)."""
        entry.state = GONE
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
                line.entries = deque(e for e in line.entries if e.state == WAITING)
                line.dead = 0

    # -- turns ---------------------------------------------------------------------

    def next(self) -> Entry | None:
        """The head with the smallest tag of an app not at its limit; None if there is none.

        Call ``take`` with it to grant it.
        """
        heap = self._heap  # compacted in place, never replaced
        while heap:
            tag, _, entry = heapq.heappop(heap)
            if entry.state != WAITING or entry.tag != tag:
                continue
            app_id = entry.app_id
            line = self._lines[app_id]
            if line.entries[0] is not entry or app_id in self._blocked:
                continue
            return entry
        return None

    def take(self, entry: Entry) -> None:
        """Grant the head ``next`` returned: charge its app's turn, count it in flight."""
        app_id = entry.app_id
        line = self._lines[app_id]
        tag = entry.tag
        assert tag is not None
        line.entries.popleft()
        line.live -= 1
        entry.state = GRANTED
        self._vtime = max(self._vtime, tag)
        line.finish = max(line.finish, tag + 1.0 / line.weight)
        if self._cfg.limit_of(app_id) is not None:
            self._inflight[app_id] = self._inflight.get(app_id, 0) + 1
        if line.live == 0:
            self._drop_line(app_id, line)
        else:
            line.skip_dead()
            self._push_head(app_id, line)

    def done(self, app_id: str) -> None:
        """A grant of ``app_id`` ended: one fewer in flight; the app may be eligible again."""
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

    def prune_idle(self) -> None:
        """Forget the finish tags of idle apps that virtual time has passed."""
        idle = self._idle_heap
        while idle and idle[0][0] <= self._vtime:
            finish, app_id = heapq.heappop(idle)
            if self._idle_finish.get(app_id) == finish:
                del self._idle_finish[app_id]

    def end_busy_period(self) -> None:
        """Nobody waits: V jumps past every finish tag; history goes."""
        if self._idle_finish:
            self._vtime = max(self._vtime, max(self._idle_finish.values()))
            self._idle_finish.clear()
        self._idle_heap.clear()
        self._heap.clear()
        self._active_weight = 0.0

    def clear(self) -> None:
        """Every line is gone (``close``); in-flight counts stay with their grants."""
        self._lines.clear()
        self._blocked.clear()

    def tables(self) -> dict[str, int]:
        return {
            "lines": len(self._lines),
            "line_entries": sum(len(line.entries) for line in self._lines.values()),
            "heap": len(self._heap),
            "blocked": len(self._blocked),
            "inflight": len(self._inflight),
            "idle_finish": len(self._idle_finish),
            "idle_heap": len(self._idle_heap),
        }

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
