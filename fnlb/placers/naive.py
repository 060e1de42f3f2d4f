"""fn's naive placer: round robin from a start that moves on every call."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

from fnlb.placers._base import BasePlacer
from fnlb.runnerpool import Runner, RunnerCall

__all__ = ["NaivePlacer"]


class NaivePlacer(BasePlacer):
    """Spreads calls evenly; ignores locality, so warm containers are often missed."""

    name = "naive"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # fn seeds from the clock's nanoseconds; a shared moving counter spreads
        # concurrent calls just as well and is deterministic to test.
        self._next = itertools.count(random.randrange(1 << 16))

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterable[Runner]:
        n = len(runners)
        if n == 0:
            return ()
        start = next(self._next)
        # Lazy: the first pick costs O(1) however large the pool.
        return (runners[(start + j) % n] for j in range(n))
