"""Warm-first: a runner that reports the call's function warm and has room, then chbl."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fnlb.placers.chbl import BoundedLoadHashPlacer
from fnlb.runnerpool import Runner, RunnerCall

__all__ = ["WarmFirstPlacer"]


class WarmFirstPlacer(BoundedLoadHashPlacer):
    """Try the least-occupied runner that holds ``slot_hash_id`` warm and has a free slot.

    Only runner reports (``RunnerStatus.warm_slots``, fresh in the
    ``LoadTracker``) say what is warm; without them this is exactly ``chbl``.
    Cost: one look-up in the tracker's warm index plus a look at no more than
    ``max_candidates`` of the runners warm for this function (a hot function is
    warm on many), then chbl's order.
    """

    name = "warm"
    max_candidates = 8

    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterator[Runner]:
        if not runners:
            return
        tracker = self._load
        ring = self.ring(runners)
        best: int | None = None
        best_score = 0.0
        budget = self.max_candidates
        for address in tracker.warm_runners(call.slot_hash_id):
            idx = ring.index_of.get(address)
            # has_room is True only with a fresh report: stale warmth is no promise.
            if idx is None or tracker.has_room(address) is not True:
                continue
            score = (tracker.load(address) + 1) / tracker.weight(address)
            if best is None or score < best_score:
                best, best_score = idx, score
            budget -= 1
            if budget == 0:
                break
        if best is not None:
            yield runners[best]
        for r in super().order(runners, call):
            if best is None or r is not runners[best]:
                yield r
