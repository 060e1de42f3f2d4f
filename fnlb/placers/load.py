"""Per-runner load as the LB sees it: exact local in-flight counts plus runner reports.

One ``LoadTracker`` per LB, shared by its placer (``make_placer(..., load=...)``)
and by whatever polls runner ``Status`` (``update_reported``)::

    load = LoadTracker(fresh_for=2.0)
    load.started("10.0.0.1:9190")            # BasePlacer: an attempt begins
    load.finished("10.0.0.1:9190")           # ... and try_exec returned
    load.update_reported("10.0.0.1:9190", status)   # a Status answer arrived
    load.update_free("10.0.0.1:9190", 3, 512)       # a reply's piggybacked free slots
    load.load("10.0.0.1:9190")               # what load-aware placers compare
    load.retain(pool_addresses)              # membership changed: drop the rest
    load.subscribe(on_finished)              # on_finished(address, inflight_left)

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
and our own share exactly. A known skew: a call of ours that ends between the
runner writing its report and us reading it shows up as one phantom "other"
call until the next report; with Status every couple of seconds and calls of
tens of ms this is rare and small.

Fresh reports also give each runner's capacity (``weight``: its slot count
over the mean, for capacity-aware bounds), whether it drains, and which slot
hash ids it holds warm (``warm_runners``: an index kept in step with the
reports, for warm-aware placement).

The in-flight count is the LB's only count of its calls on a runner (as
grpc-go's least-request picker keeps one ``endpointRPCCounts``): placers,
Admin's view and the pool's close-after-retire rule all read it, and listeners
(``subscribe``) hear every end. Membership never touches it: a runner that
leaves the pool keeps its count until its calls end, so one that comes back
while they run is not undercounted.

Runners whose reports carry no slot count (fn's runners, which report only
``active``) have a capacity the LB **learns**: a busy NACK from one says it
runs all it can at the load we see there then, so that load is its capacity
(``learned``). It holds for ``fresh_for``; after that the runner is probed
with twice as many calls plus one (a capacity that grew, or an estimate taken
while other LBs held slots), and the next NACK learns again. Until its first
NACK such a runner's room is unknown, as before.

Every per-runner table is bounded: in-flight entries vanish when their count
returns to zero, report entries are dropped by ``retain``/``forget`` and, as a
backstop when nobody calls those, by a periodic prune of stale reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from fnlb.runnerpool import RunnerStatus

__all__ = ["LoadTracker", "Report", "DEFAULT_FRESH_FOR"]

_EMPTY: frozenset[str] = frozenset()

# Status polling every second or so keeps a report fresh with room for one miss.
DEFAULT_FRESH_FOR = 2.0
# A learned capacity outlives its runner's reports this many fresh_for periods
# (polls over a budget come rarely), then goes: the table stays bounded.
_LEARNED_KEEP = 10


@dataclass(frozen=True, slots=True)
class Report:
    """What we keep of one runner's Status answer."""

    at: float  # monotonic time it was received
    others: int  # reported active minus our own in-flight calls then, >= 0
    slots_total: int
    slots_free: int
    warm: frozenset[str]  # slot hash ids the runner holds warm
    draining: bool
    memory_mb_total: int = 0  # 0: not reported
    # Seconds the report counts as fresh; None: the tracker's fresh_for. A
    # watched runner's reports last longer (they come on change, not on a timer).
    fresh_for: float | None = None
    memory_mb_free: int = 0
    # A busy NACK's lesson (``saturated``): this many more calls of others than
    # reported, until ``held_until`` (monotonic) or the next report.
    held: int = 0
    held_until: float = 0.0


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
        # Sum and count of reported slot totals: the mean that weights are relative to.
        self._slots_sum = 0
        self._slots_count = 0
        # slot hash id -> runners reporting it warm; entries leave with their reports.
        self._warm_index: dict[str, set[str]] = {}
        # address -> (capacity, monotonic time) learned from a NACK, for runners
        # that report no slot count; dropped with the runner (forget/retain).
        self._learned: dict[str, tuple[int, float]] = {}
        self._next_prune = clock() + fresh_for
        self._listeners: list[Callable[[str, int], None]] = []
        self._report_listeners: list[Callable[[str], None]] = []

    # -- local in-flight counts (BasePlacer calls these around try_exec) -------

    def started(self, address: str) -> None:
        self._inflight[address] = self._inflight.get(address, 0) + 1
        self._total_inflight += 1

    def finished(self, address: str) -> None:
        n = self._inflight.get(address, 0)
        if n <= 0:
            raise RuntimeError(f"finished({address!r}) without started()")
        if n == 1:
            # Dropping zero entries keeps the table as small as the calls in flight,
            # whatever happens to pool membership.
            del self._inflight[address]
        else:
            self._inflight[address] = n - 1
        self._total_inflight -= 1
        for listener in self._listeners:
            listener(address, n - 1)

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(address, inflight_left)`` after every ``finished``.

        The pool closes a retired runner's channel when its count reaches zero;
        a capacity-aware queue learns that a slot may be free.
        """
        self._listeners.append(listener)

    def subscribe_reports(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(address)`` after every ``update_reported``."""
        self._report_listeners.append(listener)

    def inflight(self, address: str) -> int:
        return self._inflight.get(address, 0)

    # -- runner reports ----------------------------------------------------------

    def update_reported(self, address: str, status: RunnerStatus,
                        at: float | None = None, fresh_for: float | None = None) -> None:
        """Merge a runner's Status answer received at ``at`` (monotonic; default now).

        ``fresh_for``: how long this report holds (default: the tracker's); a
        runner that pushes its status on every change (Runner/Watch) is
        believed until its heartbeat is overdue.
        """
        now = self._clock() if at is None else at
        others = max(0, status.active - self._inflight.get(address, 0))
        old = self._reports.pop(address, None)
        if old is not None:
            self._unaccount(address, old)
        report = Report(
            at=now, others=others, slots_total=max(0, status.slots_total),
            slots_free=status.slots_free, warm=frozenset(status.warm_slots),
            draining=status.draining or status.drained,
            memory_mb_total=max(0, status.memory_mb_total), fresh_for=fresh_for,
            memory_mb_free=max(0, status.memory_mb_free))
        self._reports[address] = report
        self._total_others += others
        if report.slots_total > 0:
            self._slots_sum += report.slots_total
            self._slots_count += 1
        for key in report.warm:
            self._warm_index.setdefault(key, set()).add(address)
        self._maybe_prune()
        for listener in self._report_listeners:
            listener(address)

    def update_free(self, address: str, slots_free: int, memory_mb_free: int,
                    at: float | None = None) -> None:
        """Merge the free slots and memory a runner piggybacked on a reply (runner.proto,
        THE PIGGYBACK), written while the replying call still held its slot.

        Refreshes the last report (of any age) with a new count of others' calls:
        ``slots_total - slots_free`` run there, minus ours (the replying call is
        still counted in flight, as on the runner). Warm set and draining keep
        the last report's. Nothing learned without a report with a slot count.
        """
        r = self._reports.get(address)
        if r is None or r.slots_total <= 0:
            return
        now = self._clock() if at is None else at
        active = max(0, r.slots_total - max(0, slots_free))
        others = max(0, active - self._inflight.get(address, 0))
        self._total_others += others - r.others
        self._reports[address] = replace(r, at=now, others=others, slots_free=slots_free,
                                         memory_mb_free=max(0, memory_mb_free), held=0)
        if others < r.others:
            # Room appeared that our own calls' ends did not show: say so.
            for listener in self._report_listeners:
                listener(address)

    def _unaccount(self, address: str, r: Report) -> None:
        """Take a report that is leaving out of the running sums and the warm index."""
        self._total_others -= r.others
        if r.slots_total > 0:
            self._slots_sum -= r.slots_total
            self._slots_count -= 1
        for key in r.warm:
            holders = self._warm_index.get(key)
            if holders is not None:
                holders.discard(address)
                if not holders:
                    del self._warm_index[key]

    def report(self, address: str) -> Report | None:
        """The runner's last report if it is still fresh, else None."""
        r = self._reports.get(address)
        if r is None or self._clock() - r.at > (r.fresh_for or self.fresh_for):
            return None
        return r

    # -- what placers read -------------------------------------------------------

    def load(self, address: str) -> int:
        """Calls running on the runner as far as we know: ours, plus others' if reported."""
        n = self._inflight.get(address, 0)
        r = self._reports.get(address)
        if r is not None and (r.others or r.held):
            now = self._clock()
            if now - r.at <= (r.fresh_for or self.fresh_for):
                n += r.others
            if r.held and now <= r.held_until:
                n += r.held
        return n

    def total_load(self) -> int:
        """Sum of ``load`` over every runner known, in O(1) amortised.

        Stale reports leave the sum at the next prune (within ``fresh_for``),
        so for a moment it may count a little more than the per-runner loads.
        """
        self._maybe_prune()
        return self._total_inflight + self._total_others

    def weight(self, address: str) -> float:
        """The runner's share of capacity relative to the mean runner: 1.0 when unknown.

        From fresh reports of ``slots_total``: a 4-slot runner among 2-slot ones
        weighs 2.0, so bounded-load placers let it carry twice the calls.
        """
        r = self.report(address)
        mean = self.mean_slots()
        if r is None or r.slots_total <= 0 or mean <= 0:
            return 1.0
        return r.slots_total / mean

    def warm_for(self, address: str, slot_hash_id: str) -> bool:
        r = self.report(address)
        return r is not None and slot_hash_id in r.warm

    def warm_runners(self, slot_hash_id: str) -> AbstractSet[str]:
        """Runners whose last report holds ``slot_hash_id`` warm (check freshness per runner).

        A live read-only view, not a copy: do not keep it across awaits.
        """
        return self._warm_index.get(slot_hash_id, _EMPTY)

    def mean_slots(self) -> float:
        """Mean reported slot count over runners that reported one; 0.0 when none did."""
        return self._slots_sum / self._slots_count if self._slots_count else 0.0

    def draining(self, address: str) -> bool:
        """A fresh report says the runner is draining (it NACKs every new call)."""
        r = self.report(address)
        return r is not None and r.draining

    def has_room(self, address: str) -> bool | None:
        """True/False from a fresh report (a draining runner has none) or a learned
        capacity; None if unknown. Runs for every runner on every call: one lookup
        of the report."""
        r = self.report(address)
        slots = self._slots_of(address, r)
        if slots is None:
            return None
        if r is not None and r.draining:
            return False
        return self.load(address) < slots

    def slots(self, address: str) -> int | None:
        """The runner's capacity: reported, else learned from its NACKs; None if unknown."""
        return self._slots_of(address, self.report(address))

    def _slots_of(self, address: str, r: Report | None) -> int | None:
        if r is not None and r.slots_total > 0:
            return r.slots_total
        learned = self._learned.get(address)
        if learned is None:
            return None
        slots, at = learned
        if self._clock() - at > self.fresh_for:
            return 2 * slots + 1  # probe: the runner may take more now
        return slots

    def fits(self, address: str, memory_mb: int) -> bool | None:
        """Can the runner ever run a call of ``memory_mb``? None: it reports no memory."""
        r = self.report(address)
        if r is None or r.memory_mb_total <= 0:
            return None
        return memory_mb <= r.memory_mb_total

    def memory_mb(self, address: str) -> int:
        """The runner's reported total memory (MiB); 0 when unknown."""
        r = self.report(address)
        return 0 if r is None else r.memory_mb_total

    def saturated(self, address: str) -> bool:
        """The runner refused a call (busy NACK): count it as full until we learn more.

        A NACK proves the runner runs at least ``slots_total`` calls, so the
        calls of others there are at least ``slots_total`` minus ours. Raising
        that estimate (``Report.held``, not in ``total_load``) makes
        ``has_room`` False until one of our calls there ends (then exactly the
        slot we freed is free), a new report or piggyback arrives, or
        ``fresh_for`` passes (the NACK may have been about memory; the caller
        wakes its waiters then). Several LBs sharing runners thus each reuse
        the slots they free and stop colliding on slots another LB holds. When
        the runner's capacity is not reported (no fresh report with a slot
        count), the load we see there now is its capacity, as far as we can
        tell (the module's docstring, "learns"). Always True.
        """
        r = self.report(address)
        if r is None or r.slots_total <= 0:
            self._learned[address] = (self.load(address), self._clock())
            return True
        # The lesson lasts fresh_for at most: a watched runner's report may stay
        # fresh for a heartbeat (30 s), and a NACK for memory says nothing of slots.
        held = r.slots_total - self._inflight.get(address, 0) - r.others
        if held > 0:
            self._reports[address] = replace(r, held=held,
                                             held_until=self._clock() + self.fresh_for)
        return True

    # -- membership --------------------------------------------------------------

    def forget(self, address: str) -> None:
        """Drop the reports of a runner that left the pool.

        Its in-flight count stays: those calls still run, and end through ``finished``.
        """
        self._learned.pop(address, None)
        r = self._reports.pop(address, None)
        if r is not None:
            self._unaccount(address, r)

    def retain(self, addresses: Iterable[str]) -> None:
        """Keep reports only for ``addresses`` (the pool's members now)."""
        keep = set(addresses)
        for address in [a for a in (*self._reports, *self._learned) if a not in keep]:
            self.forget(address)

    def learned_count(self) -> int:
        """Entries of learned capacities (runners that report no slots)."""
        return len(self._learned)

    def table_sizes(self) -> tuple[int, int, int]:
        """(in-flight entries, report entries, warm-index keys): for tests and debugging."""
        return len(self._inflight), len(self._reports), len(self._warm_index)

    def _maybe_prune(self) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        # O(reports) once per fresh_for: amortised O(1) per call.
        self._next_prune = now + self.fresh_for
        for address, r in list(self._reports.items()):
            if now - r.at > (r.fresh_for or self.fresh_for):
                del self._reports[address]
                self._unaccount(address, r)
        # Lessons of runners we no longer hear from (they left, or a NACK came
        # after forget) go after _LEARNED_KEEP fresh_for periods.
        old = now - _LEARNED_KEEP * self.fresh_for
        for address in [a for a, (_, at) in self._learned.items()
                        if at < old and a not in self._reports]:
            del self._learned[address]
