"""The placers beyond fn (p2c, chbl): fn's semantics, and what each promises on top."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections import Counter
from collections.abc import Sequence

import pytest

from fnlb.errors import ConfigError, RunnerError, ServerTooBusy
from fnlb.metrics import Metrics
from fnlb.placers import BasePlacer, make_placer
from fnlb.placers._hash import fn_key_hash, jump_hash
from fnlb.placers.chbl import DEFAULT_C, BoundedLoadHashPlacer, HashRing, ring_hash
from fnlb.placers.load import LoadTracker
from fnlb.placers.p2c import PowerOfTwoPlacer
from fnlb.placers.warm import WarmFirstPlacer
from fnlb.runnerpool import Attempt, PlacerConfig, Runner, RunnerCall, RunnerStatus
from tests.fakes import Clock, FakePool, FakeRunner, make_call
from tests.helpers import sample

FAST = PlacerConfig(retry_all_delay=0.001, placer_timeout=0.2, detached_placer_timeout=0.1)
BEYOND = ["p2c", "chbl", "warm"]


def addresses(runners: Sequence[Runner]) -> list[str]:
    return [r.address for r in runners]


class Gate:
    """Holds calls until released; ``arrived`` is set once ``expected`` calls are held."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.held = 0
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        self.held += 1
        if self.held >= self.expected:
            self.arrived.set()
        await self.release.wait()


class GatedRunner(FakeRunner):
    """Takes every call and holds it at ``gate``: concurrency without timers."""

    def __init__(self, address: str, gate: Gate) -> None:
        super().__init__(address, "ok")
        self.gate = gate
        self.holding = 0

    async def try_exec(self, call: RunnerCall) -> Attempt:
        self.holding += 1
        await self.gate.hold()
        return await super().try_exec(call)


def predicted_order(placer: BasePlacer, runners: Sequence[FakeRunner],
                    call: RunnerCall) -> list[FakeRunner]:
    """The order place_call will walk (idle loads): p2c's generator is pinned to replay it."""
    if isinstance(placer, PowerOfTwoPlacer):
        placer._rng = random.Random(3)
        order = list(placer.order(runners, call))
        placer._rng = random.Random(3)
    else:
        order = list(placer.order(runners, call))
    by_address = {r.address: r for r in runners}
    return [by_address[r.address] for r in order]


# -- fn semantics, for every new placer -------------------------------------------

@pytest.mark.parametrize("name", BEYOND)
async def test_nack_moves_on_and_each_runner_is_tried_once_per_round(name: str) -> None:
    m = Metrics()
    runners = [FakeRunner(f"r{i}", "busy") for i in range(6)]
    runners[2].behaviour = "down"
    placer = make_placer(name, FAST, m)
    call = make_call()
    last = predicted_order(placer, runners, call)[-1]
    last.behaviour = "ok"
    placed = await placer.place_call(FakePool(runners), call)
    assert placed is last
    assert call.attempts == 6
    assert sorted(len(r.tried) for r in runners) == [1] * 6
    assert sample(m, "fnlb_placer_retries_total", {"reason": "busy"}) == 4
    assert sample(m, "fnlb_placer_retries_total", {"reason": "error"}) == 1
    assert sample(m, "fnlb_placer_placed_total", {"result": "ok"}) == 1


@pytest.mark.parametrize("name", BEYOND)
async def test_all_busy_is_retried_in_rounds_then_server_too_busy(name: str) -> None:
    m = Metrics()
    runners = [FakeRunner(f"r{i}", "busy") for i in range(3)]
    t0 = time.monotonic()
    with pytest.raises(ServerTooBusy):
        await make_placer(name, FAST, m).place_call(FakePool(runners), make_call())
    assert time.monotonic() - t0 >= FAST.placer_timeout
    rounds = [len(r.tried) for r in runners]
    assert min(rounds) > 1 and max(rounds) - min(rounds) <= 1  # whole rounds, each once
    assert sample(m, "fnlb_placer_timeouts_total") == 1


@pytest.mark.parametrize("name", BEYOND)
async def test_committed_failure_is_never_retried(name: str) -> None:
    m = Metrics()
    runners = [FakeRunner(f"r{i}", "ok") for i in range(4)]
    placer = make_placer(name, FAST, m)
    call = make_call(fn_id="x")
    first = predicted_order(placer, runners, call)[0]
    first.behaviour = "fail"
    with pytest.raises(RunnerError):
        await placer.place_call(FakePool(runners), call)
    assert [len(r.tried) for r in runners if r is not first] == [0, 0, 0]
    assert sample(m, "fnlb_placer_placed_total", {"result": "error"}) == 1


@pytest.mark.parametrize("name", BEYOND)
def test_empty_pool_orders_nothing(name: str) -> None:
    assert list(make_placer(name).order([], make_call())) == []


# -- p2c ------------------------------------------------------------------------------

def test_p2c_order_is_always_a_full_permutation() -> None:
    rng = random.Random(1)
    load = LoadTracker()
    placer = PowerOfTwoPlacer(FAST, Metrics(), load, rng=random.Random(2))
    for n in (1, 2, 3, 7, 50):
        runners = [FakeRunner(f"r{i}") for i in range(n)]
        for _ in range(200):
            a = rng.choice(runners).address
            load.started(a)
            order = addresses(list(placer.order(runners, make_call())))
            assert sorted(order) == sorted(addresses(runners))


def test_p2c_first_pick_is_the_less_loaded_of_two_and_the_rest_by_load() -> None:
    load = LoadTracker()
    runners = [FakeRunner(f"r{i}") for i in range(3)]
    for i, r in enumerate(runners):
        for _ in range(i):
            load.started(r.address)  # loads 0, 1, 2
    placer = PowerOfTwoPlacer(FAST, Metrics(), load, rng=random.Random(5))
    firsts: Counter[str] = Counter()
    for _ in range(600):
        order = list(placer.order(runners, make_call()))
        firsts[order[0].address] += 1
        rest = [load.load(r.address) for r in order[1:]]
        assert rest == sorted(rest)
    # The most loaded runner always loses its duel; the least loaded always wins
    # when drawn (2 of 3 pairs) -> ~2/3 of first picks.
    assert firsts["r2"] == 0
    assert 0.58 < firsts["r0"] / 600 < 0.75


def test_p2c_weighs_load_by_reported_capacity() -> None:
    load = LoadTracker()
    big, small = FakeRunner("big"), FakeRunner("small")
    load.update_reported("big", RunnerStatus(slots_total=4))
    load.update_reported("small", RunnerStatus(slots_total=1))
    load.started("big")
    placer = PowerOfTwoPlacer(FAST, Metrics(), load, rng=random.Random(1))
    # One call on four slots is less occupied than none on one slot: (1+1)/4 < (0+1)/1.
    for _ in range(20):
        assert next(iter(placer.order([small, big], make_call()))) is big


async def test_p2c_spreads_concurrent_calls_evenly() -> None:
    gate = Gate(expected=400)
    runners = [GatedRunner(f"r{i}", gate) for i in range(4)]
    # A placer timeout far beyond the test: on a starved CPU, 400 tasks may take
    # longer than FAST's 0.2 s to reach their runner, and a call that timed out
    # would never arrive at the gate.
    patient = dataclasses.replace(FAST, placer_timeout=60.0)
    placer = PowerOfTwoPlacer(patient, Metrics(), LoadTracker(), rng=random.Random(11))
    tasks = [asyncio.create_task(placer.place_call(FakePool(runners), make_call(call_id=str(i))))
             for i in range(400)]
    async with asyncio.timeout(60):
        await gate.arrived.wait()
    held = sorted(r.holding for r in runners)
    # One random choice spreads 400 calls over 4 runners with a max-min gap
    # around 20 (sd ~8.7 each); with two choices the gap stays O(log log n).
    assert held[-1] - held[0] <= 4
    gate.release.set()
    await asyncio.gather(*tasks)


# -- chbl -----------------------------------------------------------------------------

def chbl(load: LoadTracker | None = None, c: float = 1.25) -> BoundedLoadHashPlacer:
    return BoundedLoadHashPlacer(FAST, Metrics(), load if load is not None else LoadTracker(), c=c)


def test_chbl_idle_pool_sends_each_function_to_its_ring_home() -> None:
    runners = [FakeRunner(f"10.0.0.{i}:9190") for i in range(8)]
    placer = chbl()
    ring = HashRing(addresses(runners))
    homes: Counter[str] = Counter()
    for i in range(400):
        fn = f"fn-{i}"
        order = list(placer.order(runners, make_call(fn_id=fn)))
        assert sorted(addresses(order)) == sorted(addresses(runners))
        assert order[0] is runners[ring.home(ring_hash(fn))]
        assert order == list(placer.order(runners, make_call(fn_id=fn)))  # stable
        homes[order[0].address] += 1
    assert len(homes) == 8  # functions are spread over every runner


def test_chbl_spills_along_the_ring_when_home_is_full_and_the_bound_holds() -> None:
    load = LoadTracker()
    runners = [FakeRunner(f"10.0.0.{i}:9190") for i in range(5)]
    placer = chbl(load, c=1.25)
    ring = HashRing(addresses(runners))
    walk = [runners[i] for i in ring.walk(ring_hash("hot"))]
    placed: list[Runner] = []
    for k in range(40):  # one hot function, calls held (never finish)
        cap = math.ceil(1.25 * (k + 1) / 5)
        r = next(iter(placer.order(runners, make_call(fn_id="hot"))))
        # The first runner along the ring that is below the bound, never another.
        assert r is next(w for w in walk if load.load(w.address) < cap)
        load.started(r.address)
        placed.append(r)
        assert max(load.load(a) for a in addresses(runners)) <= cap
    # Home took calls first, and no runner ever went past c x average.
    assert placed[0] is walk[0]
    assert max(load.load(a) for a in addresses(runners)) <= math.ceil(1.25 * 40 / 5)


def test_chbl_full_runners_come_last_but_are_still_tried() -> None:
    load = LoadTracker()
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    placer = chbl(load)
    home = next(iter(placer.order(runners, make_call(fn_id="f"))))
    for _ in range(5):
        load.started(home.address)
    order = list(placer.order(runners, make_call(fn_id="f")))
    assert order[-1] is home and len(order) == 4


def test_chbl_skips_a_runner_whose_fresh_report_says_draining() -> None:
    load = LoadTracker()
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    placer = chbl(load)
    home = next(iter(placer.order(runners, make_call(fn_id="f"))))
    load.update_reported(home.address, RunnerStatus(active=0, slots_total=2))
    assert next(iter(placer.order(runners, make_call(fn_id="f")))) is home
    load.update_reported(home.address, RunnerStatus(active=0, slots_total=2, draining=True))
    assert list(placer.order(runners, make_call(fn_id="f")))[-1] is home


def test_chbl_weights_the_bound_by_reported_slot_counts() -> None:
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    home = next(iter(chbl().order(runners, make_call(fn_id="f"))))
    plain, weighted = LoadTracker(), LoadTracker()
    for r in runners:  # home has 4 slots, the others 1: home weighs 4 / 1.75
        weighted.update_reported(r.address, RunnerStatus(slots_total=4 if r is home else 1))
    for t in (plain, weighted):
        for r in runners:
            for _ in range(5 if r is home else 1):
                t.started(r.address)
    # Home holds 5 calls, more than its 4 slots; total 8. The paper's bound is
    # ceil(1.25 * 9 / 4) = 3: full. Weighted by capacity it is ceil(2.81 * 2.29) = 7.
    assert next(iter(chbl(plain).order(runners, make_call(fn_id="f")))) is not home
    assert next(iter(chbl(weighted).order(runners, make_call(fn_id="f")))) is home


def test_chbl_bound_is_never_below_the_reported_slot_count() -> None:
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    home = next(iter(chbl().order(runners, make_call(fn_id="f"))))
    plain, reported = LoadTracker(), LoadTracker()
    for r in runners:
        reported.update_reported(r.address, RunnerStatus(slots_total=2))
    for t in (plain, reported):
        t.started(home.address)
    # Bound: ceil(1.25 * 2 / 4) = 1, so by the paper home is full with one call;
    # but it has a second slot free, and spilling would only buy a cold start.
    assert next(iter(chbl(plain).order(runners, make_call(fn_id="f")))) is not home
    assert next(iter(chbl(reported).order(runners, make_call(fn_id="f")))) is home
    reported.started(home.address)
    assert next(iter(chbl(reported).order(runners, make_call(fn_id="f")))) is not home


async def test_chbl_concurrent_hot_function_respects_the_bound() -> None:
    gate = Gate(expected=20)
    runners = [GatedRunner(f"r{i}", gate) for i in range(4)]
    placer = chbl(LoadTracker(), c=1.25)
    tasks = [asyncio.create_task(placer.place_call(
        FakePool(runners), make_call(fn_id="hot", call_id=str(i)))) for i in range(20)]
    await gate.arrived.wait()
    assert max(r.holding for r in runners) <= math.ceil(1.25 * 20 / 4)
    gate.release.set()
    await asyncio.gather(*tasks)


def test_chbl_c_is_passed_to_the_bounded_placers_and_validated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_placer("chbl", c=1.25).c == 1.25  # type: ignore[attr-defined]
    assert make_placer("warm", c=3).c == 3  # type: ignore[attr-defined]
    assert make_placer("chbl").c == DEFAULT_C  # type: ignore[attr-defined]
    assert not hasattr(make_placer("naive", c=1.25), "c")  # no bound: ignored
    # Read by the CLI like every other setting (tests/test_cli.py), not by the placer.
    monkeypatch.setenv("FNLB_CHBL_C", "5")
    assert make_placer("chbl").c == DEFAULT_C  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=">= 1"):
        BoundedLoadHashPlacer(c=0.9)


def test_chbl_caches_the_ring_per_snapshot_and_keeps_it_bounded() -> None:
    placer = chbl()
    rng = random.Random(3)
    members = [FakeRunner(f"10.0.0.{i}:9190") for i in range(6)]
    snapshot = tuple(members)
    ring = placer.ring(snapshot)
    assert placer.ring(snapshot) is ring  # same snapshot: no rebuild
    assert placer.ring(tuple(members)) is ring  # equal membership: no rebuild either
    for step in range(2000):
        members.pop(rng.randrange(len(members)))
        members.append(FakeRunner(f"10.1.{step // 200}.{step % 200}:9190"))
        next(iter(placer.order(tuple(members), make_call(fn_id=str(step)))))
    ring = placer.ring(tuple(members))
    assert len(ring._points_by_address) == 6
    assert len(ring.points) == 6 * placer.vnodes


# -- key-space movement ------------------------------------------------------------------

FN_IDS = [f"app-{i % 97}/fn-{i}" for i in range(10_000)]


@pytest.mark.parametrize("n", [10, 25])
def test_chbl_removing_one_runner_moves_only_its_own_share(n: int) -> None:
    addrs = [f"10.0.0.{i}:9190" for i in range(n)]
    keys = [ring_hash(f) for f in FN_IDS]
    ring = HashRing(addrs)
    before = [addrs[ring.home(k)] for k in keys]
    fractions = []
    for gone in range(n):  # every position in the list, the middle included
        rest = addrs[:gone] + addrs[gone + 1:]
        after_ring = HashRing(rest, reuse=ring)
        after = [rest[after_ring.home(k)] for k in keys]
        moved = [b for b, a in zip(before, after, strict=True) if a != b]
        assert set(moved) <= {addrs[gone]}  # only the leaver's functions move
        fractions.append(len(moved) / len(keys))
    assert max(fractions) <= 1 / n + 0.03
    assert abs(sum(fractions) / n - 1 / n) < 0.002  # exactly 1/n on average


def test_chbl_a_joining_runner_takes_only_keys_for_itself() -> None:
    addrs = [f"10.0.0.{i}:9190" for i in range(10)]
    keys = [ring_hash(f) for f in FN_IDS]
    ring = HashRing(addrs)
    grown = [*addrs[:4], "10.0.0.99:9190", *addrs[4:]]  # joins mid-list
    ring2 = HashRing(grown, reuse=ring)
    before = [addrs[ring.home(k)] for k in keys]
    after = [grown[ring2.home(k)] for k in keys]
    moved = [a for b, a in zip(before, after, strict=True) if a != b]
    assert set(moved) == {"10.0.0.99:9190"}
    assert len(moved) / len(keys) <= 1 / 11 + 0.03


def test_ch_jump_hash_over_the_list_moves_far_more_when_a_mid_list_runner_leaves() -> None:
    n = 10
    addrs = [f"10.0.0.{i}:9190" for i in range(n)]
    keys = [fn_key_hash(f) for f in FN_IDS]
    before = [addrs[jump_hash(k, n)] for k in keys]
    rest = addrs[:n // 2] + addrs[n // 2 + 1:]
    after = [rest[jump_hash(k, n - 1)] for k in keys]
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(keys)
    assert moved > 3 / n  # every runner after the leaver was renumbered


# -- warm ------------------------------------------------------------------------------

def test_warm_without_reports_is_exactly_chbl() -> None:
    runners = [FakeRunner(f"r{i}") for i in range(6)]
    warm = WarmFirstPlacer(FAST, Metrics(), LoadTracker())
    for i in range(50):
        call = make_call(fn_id=f"f{i}")
        assert list(warm.order(runners, call)) == list(chbl().order(runners, call))


def test_warm_first_tries_a_fresh_warm_runner_with_room_then_chbl_order() -> None:
    clock = Clock()
    load = LoadTracker(fresh_for=1.0, clock=clock)
    runners = [FakeRunner(f"r{i}") for i in range(6)]
    warm = WarmFirstPlacer(FAST, Metrics(), load)
    call = make_call(fn_id="f")
    ring_order = list(chbl(LoadTracker()).order(runners, call))
    target = ring_order[3]  # warm somewhere that is not its home
    for r in runners:
        load.update_reported(r.address, RunnerStatus(
            slots_total=2, warm_slots=(call.slot_hash_id,) if r is target else ()))
    order = list(warm.order(runners, call))
    assert order[0] is target
    assert order[1:] == [r for r in ring_order if r is not target]  # each once
    load.started(target.address)
    load.started(target.address)  # now full: no room, warmth alone is not enough
    assert next(iter(warm.order(runners, call))) is ring_order[0]
    load.finished(target.address)
    clock.now += 1.5  # the report went stale: warmth is no longer known
    assert next(iter(warm.order(runners, call))) is ring_order[0]


def test_warm_prefers_the_least_occupied_of_several_warm_runners() -> None:
    load = LoadTracker()
    runners = [FakeRunner(f"r{i}") for i in range(4)]
    call = make_call(fn_id="f")
    for r in runners:
        load.update_reported(r.address, RunnerStatus(slots_total=4,
                                                     warm_slots=(call.slot_hash_id,)))
    for r, n in zip(runners, (3, 1, 2, 3), strict=True):
        for _ in range(n):
            load.started(r.address)
    assert next(iter(WarmFirstPlacer(FAST, Metrics(), load).order(runners, call))) is runners[1]
