"""Per-runner load as the LB sees it: exact local in-flight counts plus runner reports.

One ``LoadTracker`` per LB, shared by its placer (``make_placer(..., load=...)``)
and by whatever polls runner ``Status`` (``update_reported``)::

    load = LoadTracker(fresh_for=2.0)
    load.started("10.0.0.1:9190")            # BasePlacer: an attempt begins
    load.finished("10.0.0.1:9190")           # ... and try_exec returned
    load.update_reported("10.0.0.1:9190", status)   # a Status answer arrived
    load.load("10.0.0.1:9190")               # what load-aware placers compare
    load.retain(pool_addresses)              # membership changed: drop the rest

The load of a runner is ``inflight + others``:

* ``inflight`` — attempts this LB has running on the runner now. Exact and
  free, but blind to other LB replicas.
* ``others`` — what the runner's last fresh report says runs there *besides*
  our own calls: ``max(0, reported.active - inflight_when_reported)``. With a
  single LB it is ~0; with several LB replicas it is what keeps them from
  piling onto one runner together. A report older than ``fresh_for`` seconds
  counts for nothing (its numbers describe a past that calls have since left).

Why not ``max(inflight, reported.active)``: with k LBs sending equal traffic,
``max`` sees only ~1/k of the load; the sum counts the other LBs' share once
and our own share exactly.

Every per-runner table is bounded by pool membership: in-flight entries vanish
when their count returns to zero, report entries are dropped by
``retain``/``forget`` and, as a backstop when nobody calls those, by a periodic
prune of stale reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fnlb.runnerpool import RunnerStatus

__all__ = ["LoadTracker", "Report", "DEFAULT_FRESH_FOR"]

# Status polling every second or so keeps a report fresh with room for one miss.
DEFAULT_FRESH_FOR = 2.0


@dataclass(frozen=True, slots=True)
class Report:
    """What we keep of one runner's Status answer."""

    at: float  # monotonic time it was received
    others: int  # reported active minus our own in-flight calls then, >= 0
    slots_total: int
    slots_free: int
    warm: frozenset[str]  # slot hash ids the runner holds warm
    draining: bool


class LoadTracker:
    """In-flight calls per runner address, merged with fresh runner reports.

    Not thread-safe: it lives on the LB's event loop like the placer.
    """

    def __init__(self, fresh_for: float = DEFAULT_FRESH_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not fresh_for > 0:
            raise ValueError(f"fresh_for must be > 0, got {fresh_for}")
        self.fresh_for = fresh_for
        self._clock = clock
        self._inflight: dict[str, int] = {}
        self._reports: dict[str, Report] = {}
        self._total_inflight = 0
        self._total_others = 0
        self._next_prune = clock() + fresh_for

    # -- local in-flight counts (BasePlacer calls these around try_exec) -------

    def started(self, address: str) -> None:
        self._inflight[address] = self._inflight.get(address, 0) + 1
        self._total_inflight += 1

    def finished(self, address: str) -> None:
        n = self._inflight.get(address, 0)
        if n <= 0:
            # Already forgotten (the runner left the pool mid-call): nothing to undo.
            return
        if n == 1:
            # Dropping zero entries keeps the table as small as the calls in flight,
            # whatever happens to pool membership.
            del self._inflight[address]
        else:
            self._inflight[address] = n - 1
        self._total_inflight -= 1

    def inflight(self, address: str) -> int:
        return self._inflight.get(address, 0)

    # -- runner reports ----------------------------------------------------------

    def update_reported(self, address: str, status: RunnerStatus,
                        at: float | None = None) -> None:
        """Merge a runner's Status answer received at ``at`` (monotonic; default now)."""
        now = self._clock() if at is None else at
        others = max(0, status.active - self._inflight.get(address, 0))
        old = self._reports.get(address)
        if old is not None:
            self._total_others -= old.others
        self._reports[address] = Report(
            at=now, others=others, slots_total=status.slots_total,
            slots_free=status.slots_free, warm=frozenset(status.warm_slots),
            draining=status.draining or status.drained)
        self._total_others += others
        self._maybe_prune()

    def report(self, address: str) -> Report | None:
        """The runner's last report if it is still fresh, else None."""
        r = self._reports.get(address)
        if r is None or self._clock() - r.at > self.fresh_for:
            return None
        return r

    # -- what placers read -------------------------------------------------------

    def load(self, address: str) -> int:
        """Calls running on the runner as far as we know: ours, plus others' if reported."""
        n = self._inflight.get(address, 0)
        r = self._reports.get(address)
        if r is not None and r.others and self._clock() - r.at <= self.fresh_for:
            n += r.others
        return n

    def total_load(self) -> int:
        """Sum of ``load`` over every runner known, in O(1) amortised.

        Stale reports leave the sum at the next prune (within ``fresh_for``),
        so for a moment it may count a little more than the per-runner loads.
        """
        self._maybe_prune()
        return self._total_inflight + self._total_others

    def warm_for(self, address: str, slot_hash_id: str) -> bool:
        r = self.report(address)
        return r is not None and slot_hash_id in r.warm

    def has_room(self, address: str) -> bool | None:
        """True/False from a fresh report (a draining runner has none); None if unknown."""
        r = self.report(address)
        if r is None or r.slots_total <= 0:
            return None
        if r.draining:
            return False
        return self.load(address) < r.slots_total

    # -- membership --------------------------------------------------------------

    def forget(self, address: str) -> None:
        """Drop everything about a runner that left the pool."""
        self._total_inflight -= self._inflight.pop(address, 0)
        r = self._reports.pop(address, None)
        if r is not None:
            self._total_others -= r.others

    def retain(self, addresses: Iterable[str]) -> None:
        """Keep state only for ``addresses`` (the pool's members now)."""
        keep = set(addresses)
        for table in (self._inflight, self._reports):
            for address in [a for a in table if a not in keep]:
                self.forget(address)

    def table_sizes(self) -> tuple[int, int]:
        """(in-flight entries, report entries): for tests and debugging."""
        return len(self._inflight), len(self._reports)

    def _maybe_prune(self) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        # O(reports) once per fresh_for: amortised O(1) per call.
        self._next_prune = now + self.fresh_for
        for address, r in list(self._reports.items()):
            if now - r.at > self.fresh_for:
                del self._reports[address]
                self._total_others -= r.others
