"""What the LB believes about free runner slots, and when waiting calls get a turn.

Under overload fn's placer re-walks every runner every ``retry_all_delay`` for
every waiting call, so each waiting call keeps sending attempts that runners
refuse. ``Capacity`` replaces that sweep with a wait driven by events:

* A runner's **room** comes from the ``LoadTracker``: a fresh Status report
  gives its slot count (``slots_total``), and load is our exact in-flight count
  plus what others run there as of the last report. ``room()`` is True (a free
  slot is believed), False (full or draining) or None (unknown: no fresh
  report, e.g. a runner that reports no slots; such runners keep fn's sweep
  until their first NACK, which teaches the tracker their capacity).
* A **NACK** means our view was wrong (another LB took the slot): the tracker
  then counts the runner as full (``LoadTracker.saturated``) until one of our
  calls there ends, which frees exactly the slot we held, or a new report
  arrives. A call whose every believed-free runner refused thus waits for the
  next event instead of backing off on a timer, and never re-walks the whole
  list every 10 ms.
* A call that finds no runner with room, or finds others already waiting
  (first come, first served), waits in the ``WaitQueue`` (fair across apps).
  **Events** give turns: a call of ours ends, a report arrives, the offered
  runners change. On each, ``kick()`` hands out as many turns as slots are
  believed free and not yet promised to a woken waiter.

Costs: a kick is O(runners) and happens only while calls wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from fnlb import tracing
from fnlb.placers.load import LoadTracker
from fnlb.placers.queue import Grant, WaitQueue
from fnlb.runnerpool import Runner

__all__ = ["Capacity"]

# After a NACK's lesson expires, a little later so that it has.
_EXPIRY_SLACK_S = 0.01


class Capacity:
    """Believed free slots per runner, and the queue's wake-ups.

    ``offered`` returns the runners placers are offered now (the pool's
    snapshot); call ``changed()`` when that set changes.
    """

    def __init__(self, load: LoadTracker, queue: WaitQueue,
                 offered: Callable[[], Sequence[Runner]]) -> None:
        self.load = load
        self.queue = queue
        self._offered = offered
        load.subscribe(self._ended)
        load.subscribe_reports(self._reported)

    # -- what placement asks -----------------------------------------------------

    def room(self, address: str) -> bool | None:
        """True: a free slot is believed; False: full or draining; None: unknown."""
        return self.load.has_room(address)

    def free(self, runners: Sequence[Runner]) -> int | None:
        """Slots believed free over ``runners``; None if any runner's capacity is unknown."""
        load = self.load
        n = 0
        for r in runners:
            slots = load.slots(r.address)
            if slots is None:
                return None
            if not load.draining(r.address):
                n += max(0, slots - load.load(r.address))
        return n

    def full(self, runners: Sequence[Runner]) -> bool:
        """Every runner is believed full (a runner of unknown capacity is worth a try)."""
        return not any(self.room(r.address) is not False for r in runners)

    def must_wait(self, runners: Sequence[Runner]) -> bool:
        """Should a new call queue instead of trying ``runners`` now?

        Yes when others already wait or hold a turn not yet used (first come,
        first served), or when every runner is believed full. No while any
        runner's capacity is unknown: no event would ever say it has room, so
        calls sweep, as in fn.
        """
        free = False
        for r in runners:  # one pass: this runs for every call
            room = self.room(r.address)
            if room is None:
                return False
            free = free or room
        queue = self.queue
        return bool(queue.depth() or queue.pending_grants()) or not free

    def nacked(self, address: str) -> None:
        """The runner refused us: full until our next call there ends, it reports,
        or the lesson expires (``LoadTracker.fresh_for``): then waiters get a turn
        even if nothing else happens (a watched runner may stay silent for a
        heartbeat; a learned capacity is probed)."""
        self.load.saturated(address)
        asyncio.get_running_loop().call_later(self.load.fresh_for + _EXPIRY_SLACK_S, self.kick)

    async def wait(self, app_id: str, timeout: float | None,
                   turn: Grant | None) -> Grant:
        """Wait for a fair turn (``turn``: go back to the front with the one we had)."""
        # A turn may be due already (slots freed while nobody was waiting): kick
        # once the wait below has queued us, i.e. when this task first suspends.
        asyncio.get_running_loop().call_soon(self.kick)
        waiting = self.queue.wait(app_id, timeout, requeue=turn)
        return await (tracing.queued(waiting) if tracing.enabled else waiting)

    # -- events ------------------------------------------------------------------

    def changed(self) -> None:
        """The offered runners changed (joined, left, ejected, readmitted)."""
        self.kick()

    def kick(self) -> None:
        """Hand out turns for the slots believed free and not yet promised."""
        queue = self.queue
        if not queue.depth():
            return
        free = self.free(self._offered())
        if free is None:
            # A runner of unknown capacity joined (or its report went stale):
            # no event will say when it has room, so let the waiters sweep.
            queue.release(queue.depth())
            return
        n = free - queue.pending_grants()
        if n > 0:
            queue.release(n)

    def _ended(self, address: str, left: int) -> None:
        self.kick()

    def _reported(self, address: str) -> None:
        self.kick()
