"""fn's consistent-hash placer: a function's calls start at its home runner."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fnlb.placers._base import BasePlacer
from fnlb.placers._hash import fn_key_hash, jump_hash
from fnlb.runnerpool import Runner, RunnerCall

__all__ = ["ConsistentHashPlacer"]


class ConsistentHashPlacer(BasePlacer):
    """SipHash(fn_id) -> Jump Consistent Hash over the runner list -> walk forward.

    Keeps a function on one runner (warm containers), but a hot function floods
    its home runner, and because jump hash indexes the *list*, a runner leaving
    mid-list shifts the home of functions on every runner after it.
    """

    name = "ch"

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterable[Runner]:
        n = len(runners)
        if n == 0:
            return ()
        i = jump_hash(fn_key_hash(call.model.fn_id), n)
        # Lazy: the home runner costs O(log n) (jump hash), not a list of n.
        return (runners[(i + j) % n] for j in range(n))
