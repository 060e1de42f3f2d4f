"""Power of two choices on least load (Mitzenmacher; Envoy/gRPC ``least_request``)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from fnlb.load import LoadTracker
from fnlb.metrics import Metrics
from fnlb.placers._base import BasePlacer
from fnlb.runnerpool import PlacerConfig, Runner, RunnerCall

__all__ = ["PowerOfTwoPlacer"]


class PowerOfTwoPlacer(BasePlacer):
    """Pick two runners at random, try the less loaded first; then the rest by load.

    Two random choices already take the maximum load from ~log n/log log n down
    to ~log log n (Mitzenmacher 2001) at O(1) per decision, and, unlike "least
    loaded of all", many LBs reading slightly stale loads do not all pick the
    same runner. Ignores locality: use ``chbl`` when cold starts are expensive.

    ``order`` is lazy: the first candidate costs O(1); the rest of the
    permutation (sorted by load, O(n log n)) is built only after a NACK.
    """

    name = "p2c"

    def __init__(self, config: PlacerConfig | None = None, metrics: Metrics | None = None,
                 load: LoadTracker | None = None, *, rng: random.Random | None = None) -> None:
        super().__init__(config, metrics, load)
        self._rng = rng if rng is not None else random.Random()

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterator[Runner]:
        n = len(runners)
        if n == 0:
            return
        if n == 1:
            yield runners[0]
            return
        load = self._load.load
        i, j = self._rng.sample(range(n), 2)
        li, lj = load(runners[i].address), load(runners[j].address)
        first = i if li <= lj else j
        yield runners[first]
        # Past here the best of two was refused (NACK or down): try everyone
        # else, least loaded first, each once. A random start spreads ties so
        # that concurrent fallbacks do not all land on one idle runner.
        start = self._rng.randrange(n)
        rest = [runners[k % n] for k in range(start, start + n) if k % n != first]
        rest.sort(key=lambda r: load(r.address))  # stable: ties keep the random rotation
        yield from rest
