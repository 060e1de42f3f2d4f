"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, arXiv 1608.01350)."""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.placers._base import BasePlacer
from fnlb.placers.capacity import Capacity
from fnlb.placers.load import LoadTracker
from fnlb.runnerpool import PlacerConfig, Runner, RunnerCall

__all__ = ["BoundedLoadHashPlacer", "HashRing", "ring_hash", "DEFAULT_C", "DEFAULT_VNODES"]

# The paper's examples use c = 1.25, which suits caches, where a miss costs
# little more than a hit. Here a cold start costs ~10x a warm call, and with the
# slot-count floor the bound only bites when runners are busy: then 1.25 pushes
# a function's calls off its warm home (to a cold runner) rather than let them
# wait a few ms for a slot there. bench.placement, pooled over repeats: c = 2
# cut chbl's Zipf cold-start rate from ~0.60 to ~0.55 (ch: ~0.59) at equal or
# better latency; at 1,000 runners (bench.sim) c made no difference. Max load
# is still bounded, by 2x the mean. --chbl-c 1.25 restores the paper's value.
DEFAULT_C = 2.0
# Points per runner on the ring. The share of keys a runner owns varies by
# ~1/sqrt(vnodes) (±10% at 100); the bounded load caps what that variance can
# do to load, so more points would only cost memory and rebuild time.
DEFAULT_VNODES = 100


def ring_hash(data: str) -> int:
    """64-bit position on the ring. BLAKE2b: C speed, uniform, no seed to agree on."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


class HashRing:
    """An immutable ring of ``vnodes`` points per address, for one pool snapshot.

    Points depend only on the address, so a runner leaving takes exactly its own
    arcs with it: only the keys it owned move, ~1/n of them, wherever it sat in
    the pool's list (fn's jump hash over the list renumbers everyone after it).
    """

    __slots__ = ("addresses", "points", "owners", "n", "index_of", "_points_by_address")

    def __init__(self, addresses: Sequence[str], vnodes: int = DEFAULT_VNODES,
                 reuse: HashRing | None = None) -> None:
        self.addresses = tuple(addresses)
        self.n = len(self.addresses)
        self.index_of = {a: i for i, a in enumerate(self.addresses)}
        old = reuse._points_by_address if reuse is not None else {}
        # Only current members are kept, so this table cannot grow with churn.
        self._points_by_address: dict[str, tuple[int, ...]] = {}
        pairs: list[tuple[int, int]] = []
        for i, a in enumerate(self.addresses):
            pts = old.get(a)
            if pts is None or len(pts) != vnodes:
                pts = tuple(ring_hash(f"{a}#{v}") for v in range(vnodes))
            self._points_by_address[a] = pts
            pairs.extend((p, i) for p in pts)
        # Ties (astronomically rare 64-bit collisions) break by index: deterministic.
        pairs.sort()
        self.points = [p for p, _ in pairs]
        self.owners = [i for _, i in pairs]

    def home(self, key: int) -> int:
        """Index (into ``addresses``) of the runner owning ``key``: O(log(n·vnodes))."""
        pos = bisect_left(self.points, key)
        return self.owners[pos if pos < len(self.points) else 0]

    def walk(self, key: int) -> Iterator[int]:
        """Every runner index once, clockwise from ``key``'s position. Lazy: O(log) to start.

        Ring order matters for the first few candidates (locality); once the
        walk has stepped over 2n points, the runners not yet met follow in list
        order from the home instead, so a full round costs O(n), not O(n·vnodes).
        """
        points, owners, n = self.points, self.owners, self.n
        size = len(points)
        if size == 0:
            return
        pos = bisect_left(points, key)
        seen: set[int] = set()
        for step in range(min(size, 2 * n)):
            idx = owners[(pos + step) % size]
            if idx in seen:
                continue
            seen.add(idx)
            yield idx
            if len(seen) == n:
                return
        home = owners[pos % size]
        for k in range(n):
            idx = (home + k) % n
            if idx not in seen:
                yield idx


class BoundedLoadHashPlacer(BasePlacer):
    """A function's calls go to its home runner on a hash ring until it is full.

    Full means load >= ceil(c * (total load + 1) / n): no runner carries more
    than c times the average, so a hot function spills onward along the ring
    (onto the *same* next runners each time, which then stay warm for it)
    instead of flooding its home as ``ch`` does. Loads come from the
    ``LoadTracker``: this LB's in-flight calls plus fresh runner reports.

    Without runner reports the bound is exactly the paper's. With a fresh
    report of the runner's slot count two refinements apply, both measured in
    bench.sim (docs/placers.md):

    * the bound is weighted by capacity, ``ceil(c*(total+1)/n * slots/mean_slots)``,
      so a 4-slot runner among 2-slot ones carries twice the calls;
    * the bound is never below the runner's own slot count. At low load the
      paper's bound falls under one call per runner, which would push a
      function off a home that still has free slots and buy a cold start on
      the next runner for nothing.

    A runner reporting that it drains is always full. A runner at its slot
    count but under the bound is still tried: runners hold a call a few ms for
    a slot before NACKing it, and a short wait for a warm slot at home beats a
    cold start elsewhere.

    ``order`` is lazy and a full permutation: non-full runners in ring order,
    then the full ones (loads are estimates; a "full" runner may still accept)
    so every runner is tried once per round. Cost per decision: one bisect over
    n·vnodes points plus the full runners skipped, which the bound keeps few.
    The ring is rebuilt only when the pool's membership changes.
    """

    name = "chbl"

    def __init__(self, config: PlacerConfig | None = None, metrics: Metrics | None = None,
                 load: LoadTracker | None = None, *,
                 capacity: Capacity | None = None, idempotent_retries: int = 0,
                 c: float = DEFAULT_C,
                 vnodes: int = DEFAULT_VNODES) -> None:
        super().__init__(config, metrics, load, capacity=capacity,
                         idempotent_retries=idempotent_retries)
        self.c = c
        if not (math.isfinite(self.c) and self.c >= 1.0):
            # c < 1 would leave no runner below the bound once load is even.
            raise ConfigError(f"chbl c (--chbl-c) must be >= 1, got {self.c}")
        if vnodes < 1:
            raise ConfigError(f"chbl vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._ring: HashRing | None = None
        self._ring_src: Sequence[Runner] | None = None

    def ring(self, runners: Sequence[Runner]) -> HashRing:
        """The ring for this snapshot, cached: O(1) when the pool hands out the same object."""
        if runners is self._ring_src and self._ring is not None:
            return self._ring
        addresses = tuple(r.address for r in runners)
        if self._ring is None or self._ring.addresses != addresses:
            self._ring = HashRing(addresses, self.vnodes, reuse=self._ring)
        # Holding the snapshot itself keeps its id from being reused by another.
        self._ring_src = runners
        return self._ring

    def capacity(self, n: int, weight: float = 1.0) -> int:
        """The bound: a runner with this load or more is full.

        ``weight`` is the runner's capacity relative to the mean (from fresh
        reports of slot counts; 1.0 when unknown, which is the paper's bound).
        """
        return math.ceil(self.c * (self._load.total_load() + 1) * weight / n)

    @staticmethod
    def key(call: RunnerCall) -> int:
        return ring_hash(call.model.fn_id)

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterator[Runner]:
        n = len(runners)
        if n == 0:
            return
        ring = self.ring(runners)
        tracker = self._load
        # c * (total + 1) / n, before the ceiling: weighted per runner below.
        unit = self.c * (tracker.total_load() + 1) / n
        mean_slots = tracker.mean_slots()
        deferred: list[Runner] = []
        for idx in ring.walk(self.key(call)):
            r = runners[idx]
            address = r.address
            if self._full(tracker, address, unit, mean_slots):
                deferred.append(r)
                continue
            yield r
        yield from deferred

    @staticmethod
    def _full(tracker: LoadTracker, address: str, unit: float, mean_slots: float) -> bool:
        report = tracker.report(address)
        if report is None:
            return tracker.load(address) >= math.ceil(unit)  # the paper's bound
        if report.draining:
            return True
        slots = report.slots_total
        weight = slots / mean_slots if slots > 0 and mean_slots > 0 else 1.0
        # Never below the runner's own slot count: a free slot at home costs
        # nothing, while spilling costs a cold start on the next runner.
        return tracker.load(address) >= max(slots, math.ceil(unit * weight))
