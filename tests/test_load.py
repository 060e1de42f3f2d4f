"""LoadTracker: local in-flight counts, runner reports, and bounded per-runner tables."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from fnlb.errors import ServerTooBusy
from fnlb.metrics import Metrics
from fnlb.placers import PLACERS, make_placer
from fnlb.placers.load import LoadTracker
from fnlb.runnerpool import Attempt, PlacerConfig, RunnerCall, RunnerStatus
from tests.fakes import Clock, FakePool, FakeRunner, make_call

FAST = PlacerConfig(retry_all_delay=0.001, placer_timeout=0.2, detached_placer_timeout=0.1)


def test_inflight_counts_up_and_down_and_drops_zero_entries() -> None:
    t = LoadTracker()
    t.started("a")
    t.started("a")
    t.started("b")
    assert (t.inflight("a"), t.inflight("b"), t.total_load()) == (2, 1, 3)
    t.finished("a")
    t.finished("b")
    assert (t.inflight("a"), t.inflight("b"), t.total_load()) == (1, 0, 1)
    assert t.table_sizes() == (1, 0, 0)  # "b" went back to zero: no entry kept
    t.finished("a")
    assert t.inflight("a") == 0 and t.total_load() == 0
    assert t.table_sizes() == (0, 0, 0)
    with pytest.raises(RuntimeError, match="without started"):
        t.finished("a")  # one too many is a bug in the caller, never a negative count
    assert t.inflight("a") == 0 and t.total_load() == 0


def test_listeners_hear_every_end_with_what_is_left() -> None:
    t = LoadTracker()
    heard: list[tuple[str, int]] = []
    t.subscribe(lambda address, left: heard.append((address, left)))
    t.started("a")
    t.started("a")
    t.finished("a")
    t.finished("a")
    assert heard == [("a", 1), ("a", 0)]


def test_fresh_report_adds_the_other_lbs_calls_and_expires() -> None:
    clock = Clock()
    t = LoadTracker(fresh_for=2.0, clock=clock)
    t.started("a")
    # The runner runs 5 calls; one of them is ours, so 4 come from elsewhere.
    t.update_reported("a", RunnerStatus(active=5, slots_total=8, slots_free=3))
    assert t.load("a") == 5
    assert t.total_load() == 5
    t.started("a")  # our second call: counted exactly on top
    assert t.load("a") == 6
    clock.now += 2.5  # report is stale: only what we know for sure remains
    assert t.load("a") == 2
    assert t.total_load() == 2  # the prune also took it out of the total
    assert t.table_sizes() == (1, 0, 0)


def test_report_never_counts_our_calls_twice_or_below_zero() -> None:
    t = LoadTracker()
    for _ in range(3):
        t.started("a")
    # A report taken before our calls arrived says fewer than we have in flight.
    t.update_reported("a", RunnerStatus(active=1))
    assert t.load("a") == 3
    t.update_reported("a", RunnerStatus(active=4))  # replaces, does not add up
    assert t.load("a") == 4 and t.total_load() == 4


def test_room_and_warmth_come_from_fresh_reports_only() -> None:
    clock = Clock()
    t = LoadTracker(fresh_for=1.0, clock=clock)
    assert t.has_room("a") is None and not t.warm_for("a", "h1")
    t.update_reported("a", RunnerStatus(active=1, slots_total=2, warm_slots=("h1", "h2")))
    assert t.has_room("a") is True and t.warm_for("a", "h1") and not t.warm_for("a", "h3")
    t.started("a")  # ours fills the second slot
    assert t.has_room("a") is False
    t.update_reported("b", RunnerStatus(active=0, slots_total=6, draining=True))
    assert t.has_room("b") is False and t.draining("b")  # draining runners accept nothing
    assert (t.weight("a"), t.weight("b"), t.weight("c")) == (0.5, 1.5, 1.0)  # mean 4; c unknown
    clock.now += 1.5
    assert t.has_room("a") is None and not t.warm_for("a", "h1") and not t.draining("b")
    assert t.weight("a") == 1.0


def test_forget_and_retain_drop_reports_but_calls_count_until_they_end() -> None:
    t = LoadTracker()
    for a in ("a", "b", "c"):
        t.started(a)
        t.update_reported(a, RunnerStatus(active=3))
    assert t.total_load() == 9
    t.forget("a")
    assert t.load("a") == 1 and t.total_load() == 7  # our call there still runs
    t.retain(["c"])
    assert t.table_sizes()[:2] == (3, 1) and t.total_load() == 5
    t.finished("a")
    t.finished("b")  # calls on runners that left end later: their entries go
    assert t.table_sizes()[:2] == (1, 1) and t.total_load() == 3


def test_thousands_of_membership_changes_do_not_grow_the_tables() -> None:
    rng = random.Random(7)
    clock = Clock()
    t = LoadTracker(fresh_for=5.0, clock=clock)
    members: list[str] = [f"10.0.0.{i}:9190" for i in range(8)]
    inflight: list[str] = []
    for step in range(5000):
        # Churn: one runner leaves, a never-seen one joins.
        members.pop(rng.randrange(len(members)))
        members.append(f"10.1.{step // 250}.{step % 250}:9190")
        t.retain(members)
        for a in members:
            t.update_reported(a, RunnerStatus(active=rng.randrange(4),
                                              warm_slots=("x", f"fn-{step}-{a}")))
        a = rng.choice(members)
        t.started(a)
        inflight.append(a)
        if len(inflight) > 3:
            t.finished(inflight.pop(0))  # may be a runner that has left: still counted
        clock.now += 0.01
    n_inflight, n_reports, n_warm = t.table_sizes()
    assert n_reports <= len(members)
    assert n_warm <= 1 + len(members)  # "x" plus each member's latest function
    assert t.warm_runners("x") == set(members)
    assert n_inflight <= 3
    assert 0 <= t.total_load() <= 3 + 3 * len(members)


def test_stale_reports_are_pruned_even_if_nobody_calls_retain() -> None:
    clock = Clock()
    t = LoadTracker(fresh_for=1.0, clock=clock)
    for i in range(1000):
        t.update_reported(f"r{i}", RunnerStatus(active=1))
        clock.now += 0.01  # ten seconds of reports from runners that come and go
    # Pruned once per fresh_for: at most two windows of reports (2 s / 10 ms) remain.
    assert t.table_sizes()[1] <= 201


def test_fresh_for_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoadTracker(fresh_for=0)


# -- the placement loop feeds the tracker -------------------------------------------

@pytest.mark.parametrize("name", sorted(PLACERS))
async def test_every_attempt_is_counted_while_it_runs(name: str) -> None:
    load = LoadTracker()
    gate = asyncio.Event()
    seen: list[int] = []

    def busy(call: RunnerCall) -> Attempt:
        seen.append(load.inflight("a"))  # our own attempt is in the count
        return Attempt(False, ServerTooBusy())

    runner_a = FakeRunner("a", busy)
    runner_b = GatedRunner("b", gate)
    placer = make_placer(name, FAST, Metrics(), load=load)
    assert placer.load is load
    task = asyncio.create_task(placer.place_call(FakePool([runner_a, runner_b]), make_call()))
    await runner_b.entered.wait()
    assert load.inflight("b") == 1
    gate.set()
    assert (await task).address == "b"
    assert all(v == 1 for v in seen)
    assert load.total_load() == 0 and load.table_sizes() == (0, 0, 0)


async def test_cancelled_attempt_leaves_no_count_behind() -> None:
    load = LoadTracker()
    runner = GatedRunner("a", asyncio.Event())
    task = asyncio.create_task(
        make_placer("p2c", FAST, Metrics(), load=load).place_call(FakePool([runner]), make_call()))
    await runner.entered.wait()
    assert load.inflight("a") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert load.inflight("a") == 0 and load.table_sizes() == (0, 0, 0)


class GatedRunner(FakeRunner):
    """Takes the call, then holds it until ``gate`` opens: a call in flight, no timers."""

    def __init__(self, address: str, gate: asyncio.Event) -> None:
        super().__init__(address, "ok")
        self.gate = gate
        self.entered = asyncio.Event()

    async def try_exec(self, call: RunnerCall) -> Attempt:
        self.entered.set()
        await self.gate.wait()
        return await super().try_exec(call)


def test_a_learned_capacity_outlives_reports_for_a_while_then_goes() -> None:
    now = [0.0]
    t = LoadTracker(fresh_for=2.0, clock=lambda: now[0])
    t.started("gone")
    assert t.saturated("gone") and t.slots("gone") == 1  # a NACK with one call of ours there
    t.finished("gone")
    t.forget("gone")  # the runner left; a late NACK learns again
    assert t.saturated("gone") and t.learned_count() == 1
    now[0] += 19.0
    t.total_load()  # prunes
    assert t.learned_count() == 1  # polls over a budget come rarely: kept a while
    now[0] += 2.0
    t.total_load()
    assert t.learned_count() == 0 and t.slots("gone") is None


def test_a_nack_holds_a_reported_runner_full_for_fresh_for_at_most() -> None:
    # A watched runner's report stays fresh for a heartbeat; a NACK (perhaps for
    # memory) must not make it look full for that long.
    now = [0.0]
    t = LoadTracker(fresh_for=2.0, clock=lambda: now[0])
    t.update_reported("w", RunnerStatus(active=0, slots_total=4, slots_free=4), at=0.0)
    t._reports["w"] = replace(t._reports["w"], fresh_for=60.0)  # as a watch makes it
    assert t.saturated("w") and t.has_room("w") is False and t.load("w") == 4
    now[0] += 2.5
    assert t.has_room("w") is True and t.load("w") == 0 and t.report("w") is not None
