"""What the LB believes about free runner slots, and when waiting calls get a turn.

Under overload fn's placer re-walks every runner every ``retry_all_delay`` for
every waiting call, so each waiting call keeps sending attempts that runners
refuse. ``Capacity`` replaces that sweep with a wait driven by events:

* A runner's **room** comes from the ``LoadTracker``: a fresh Status report
  gives its slot count (``slots_total``), and load is our exact in-flight count
  plus what other LBs ran there at the last report. ``room()`` is True (free
  slot believed), False (full, draining, or refused us lately) or None
  (unknown: no fresh report, e.g. a runner that does not report slots; such
  runners keep fn's sweep for themselves).
* A **NACK** means our view was wrong (another LB took the slot, memory ran
  out): the runner counts as full until one of our calls there ends, a new
  report arrives, or a short back-off passes, which doubles (with jitter) per
  NACK in a row from ``backoff_base`` to ``backoff_max``. A call never re-walks
  the whole list every 10 ms.
* A call that finds no runner with room (or finds others already waiting:
  first come, first served) waits in the ``WaitQueue`` (fair across apps).
  **Events** give turns: a call of ours ends, a report arrives, the offered
  set changes, a NACK mark runs out. On each, ``kick()`` hands out as many
  turns as slots are believed free and not yet promised to a woken waiter.

Costs: a kick is O(runners) and only happens while calls wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

from fnlb.placers.load import LoadTracker
from fnlb.placers.queue import Grant, WaitQueue
from fnlb.runnerpool import Runner

__all__ = ["Capacity"]


class _Mark:
    __slots__ = ("until", "strikes")

    def __init__(self) -> None:
        self.until = 0.0
        self.strikes = 0


class Capacity:
    """Believed free slots per runner, NACK marks, and the queue's wake-ups.

    ``offered`` returns the runners placers are offered now (the pool's snapshot).
    Call ``changed()`` when that set changes.
    """

    def __init__(self, load: LoadTracker, queue: WaitQueue,
                 offered: Callable[[], Sequence[Runner]], *,
                 backoff_base: float = 0.010, backoff_max: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.load = load
        self.queue = queue
        self._offered = offered
        self._base = backoff_base
        self._max = backoff_max
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._marks: dict[str, _Mark] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        load.subscribe(self._ended)
        load.subscribe_reports(self._reported)

    # -- what placement asks -----------------------------------------------------

    def room(self, address: str) -> bool | None:
        """True: a free slot is believed; False: full or refusing; None: unknown."""
        mark = self._marks.get(address)
        if mark is not None and mark.until > self._clock():
            return False
        return self.load.has_room(address)

    def free(self, runners: Sequence[Runner]) -> int:
        """Slots believed free over ``runners`` (runners of unknown capacity add none)."""
        now = self._clock()
        load = self.load
        n = 0
        for r in runners:
            address = r.address
            mark = self._marks.get(address)
            if mark is not None and mark.until > now:
                continue
            report = load.report(address)
            if report is None or report.draining or report.slots_total <= 0:
                continue
            n += max(0, report.slots_total - load.load(address))
        return n

    def full(self, runners: Sequence[Runner]) -> bool:
        """Every runner is believed full (a runner of unknown capacity is worth a try)."""
        return not any(self.room(r.address) is not False for r in runners)

    def must_wait(self, runners: Sequence[Runner]) -> bool:
        """Should a new call queue instead of trying ``runners`` now?

        Yes when others already wait (first come, first served) or when every
        runner is believed full.
        """
        return bool(self.queue.depth()) or self.full(runners)

    def nacked(self, address: str) -> None:
        """The runner refused us: treat it as full for a growing, jittered while.

        Only runners that report their slots: the others keep fn's sweep.
        """
        report = self.load.report(address)
        if report is None or report.slots_total <= 0:
            return
        mark = self._marks.get(address)
        if mark is None:
            mark = self._marks[address] = _Mark()
        delay = min(self._base * 2.0 ** min(mark.strikes, 32), self._max)
        mark.strikes += 1
        # Full jitter on the upper half: refusals from several LBs spread out.
        mark.until = self._clock() + delay * (0.5 + self._rng.random() / 2)
        self._arm(mark.until)

    async def wait(self, app_id: str, timeout: float | None,
                   turn: Grant | None) -> Grant:
        """Wait for a fair turn (``turn``: go back to the front with the one we had)."""
        waiting = self.queue.wait(app_id, timeout, requeue=turn)
        # A turn may be due already (slots freed while nobody was waiting).
        self.kick()
        return await waiting

    # -- events ------------------------------------------------------------------

    def changed(self) -> None:
        """The offered runners changed (joined, left, ejected, readmitted)."""
        self.kick()

    def kick(self) -> None:
        """Hand out turns for the slots believed free and not yet promised."""
        queue = self.queue
        if not queue.depth():
            return
        n = self.free(self._offered()) - queue.pending_grants()
        if n > 0:
            queue.release(n)

    def _ended(self, address: str, left: int) -> None:
        self._marks.pop(address, None)
        self.kick()

    def _reported(self, address: str) -> None:
        self._marks.pop(address, None)
        self.kick()

    def _arm(self, at: float) -> None:
        """Kick when the earliest mark runs out, so waiters see the runner again."""
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - self._clock()), self._expired)

    def _expired(self) -> None:
        self._timer = None
        now = self._clock()
        later = [m.until for m in self._marks.values() if m.until > now]
        # A mark that ran out keeps its strikes (the next NACK backs off longer)
        # until our call there ends or a report arrives; one that ran out long
        # ago (the runner left, or we stopped trying it) is dropped.
        stale = now - 2 * self._max
        for address in [a for a, m in self._marks.items() if m.until <= stale]:
            del self._marks[address]
        if later:
            self._arm(min(later))
        elif self._marks:
            self._arm(now + 2 * self._max)  # come back to drop them
        self.kick()

    def table_sizes(self) -> int:
        """NACK marks held: for tests (bounded by the runners that refused lately)."""
        return len(self._marks)
