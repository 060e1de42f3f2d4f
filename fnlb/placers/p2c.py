"""Power of two choices on least load (Mitzenmacher; Envoy/gRPC ``least_request``)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from fnlb.metrics import Metrics
from fnlb.placers._base import BasePlacer
from fnlb.placers.capacity import Capacity
from fnlb.placers.load import LoadTracker
from fnlb.runnerpool import PlacerConfig, Runner, RunnerCall

__all__ = ["PowerOfTwoPlacer"]


class PowerOfTwoPlacer(BasePlacer):
    """Pick two runners at random, try the less loaded first; then the rest by load.

    Two random choices already take the maximum load from ~log n/log log n down
    to ~log log n (Mitzenmacher 2001) at O(1) per decision, and, unlike "least
    loaded of all", many LBs reading slightly stale loads do not all pick the
    same runner. Ignores locality: use ``chbl`` when cold starts are expensive.

    "Load" is occupancy after taking the call, ``(load + 1) / weight``, where the
    weight is the runner's reported slot count over the mean (1.0 without
    reports): among unequal runners the bigger one takes proportionally more.

    ``order`` is lazy: the first candidate costs O(1); the rest of the
    permutation (sorted by load, O(n log n)) is built only after a NACK.
    """

    name = "p2c"

    def __init__(self, config: PlacerConfig | None = None, metrics: Metrics | None = None,
                 load: LoadTracker | None = None, *,
                 capacity: Capacity | None = None, idempotent_retries: int = 0,
                 rng: random.Random | None = None) -> None:
        super().__init__(config, metrics, load, capacity=capacity,
                         idempotent_retries=idempotent_retries)
        self._rng = rng if rng is not None else random.Random()

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterator[Runner]:
        n = len(runners)
        if n == 0:
            return
        if n == 1:
            yield runners[0]
            return
        tracker = self._load
        load = tracker.load
        i, j = self._rng.sample(range(n), 2)
        # Occupancy after taking the call, relative to capacity when runners
        # report slot counts (weight 1.0 otherwise: plain least load).
        ai, aj = runners[i].address, runners[j].address
        si = (load(ai) + 1) / tracker.weight(ai)
        sj = (load(aj) + 1) / tracker.weight(aj)
        first = i if si <= sj else j
        yield runners[first]
        # Past here the best of two was refused (NACK or down): try everyone
        # else, least loaded first, each once. A random start spreads ties so
        # that concurrent fallbacks do not all land on one idle runner.
        start = self._rng.randrange(n)
        rest = [runners[k % n] for k in range(start, start + n) if k % n != first]
        # Stable sort: ties keep the random rotation.
        rest.sort(key=lambda r: (load(r.address) + 1) / tracker.weight(r.address))
        yield from rest
