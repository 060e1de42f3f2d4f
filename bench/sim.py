"""Discrete-event simulation of placement at scale: the real placers, a simulated clock.

    python -m bench.sim                      # 1,000 runners, 100k calls, every placer
    python -m bench.sim --calls 1000000      # the full million (a few minutes)
    python -m bench.sim --placers ch,chbl --json out.json
    python -m bench.sim --overload           # fn's NACK sweep vs a wait queue, overloaded

The placers are the production classes; the simulation calls their ``order()``
and plays the runners: a runner with a free slot accepts, else it NACKs (costing
``--nack-ms``, the round trip plus the runner's short wait for a slot); a call
whose function is not in the runner's LRU warm cache pays ``--cold-ms`` first.
When every runner refused, the call waits ``--retry-all-ms`` and tries a new
round, as fn's placer does. Loads reach the placers the way they do in the LB:
``LoadTracker.started`` when a runner takes a call, ``finished`` when it ends.

Simplifications (same for every placer): attempts within one round see the
state at the round's start; a runner counts a function warm from the moment
its first call was accepted; one LB. Runner Status reports (occupancy, slot
count, warm set) reach the LoadTracker every ``--report-ms`` of simulated time,
as LB-side polling would deliver them.

Workload: function popularity is Zipf(s) over ``--functions``, arrivals are
Poisson at ``--utilization`` of total slot capacity (counted with warm calls),
then a hot-key burst phase sends ``--hot-share`` of calls to one function of
middling popularity. Besides latency it measures how much of the key space
changes home runner when one runner leaves or joins, and the cost of one
placement decision at 10, 100 and 1,000 runners.

``--overload`` (``make bench-sim-overload``, ~1 minute) is a separate simulation:
closed-loop clients overload the runners 1x, 2x and 8x, and each scenario runs
twice, with fn's placer loop (``sweep``: every waiting call walks every runner,
a NACK each, every ``retry_all``) and with a capacity-aware queue in each LB
(``queue``: wait for a runner believed free, fair across apps, back off after
NACKs), one LB or several sharing the runners, each seeing only its own calls
plus stale runner reports. ``--overload --help`` lists its knobs; results go to
bench-results/sim-overload.json.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fnlb.metrics import Metrics
from fnlb.placers import PLACERS, BasePlacer, make_placer
from fnlb.placers.load import LoadTracker
from fnlb.runnerpool import PlacerConfig, RunnerStatus

__all__ = ["SimConfig", "simulate", "decision_cost", "key_movement", "main",
           "OverloadConfig", "World", "OvCall", "overload_run", "overload_scenarios",
           "overload_main"]

DEFAULT_PLACERS = ("naive", "ch", "p2c", "chbl", "warm")


@dataclass(frozen=True)
class SimConfig:
    runners: int = 1000
    calls: int = 100_000
    functions: int = 5_000
    zipf_s: float = 1.0
    slots: tuple[int, ...] = (1, 2, 4)  # heterogeneous: runners cycle through these
    warm_cache: int = 4
    cold_ms: float = 100.0
    exec_ms: float = 50.0  # mean; each function's own mean is 0.5x..1.5x this
    # Offered load as a share of slot capacity if every call were warm; cold
    # starts add to it (naive's ~90% cold rate nearly triples it).
    utilization: float = 0.2
    hot_phase: float = 0.3  # share of all calls that belong to the burst phase
    hot_share: float = 0.3  # share of burst-phase calls going to the hot function
    nack_ms: float = 1.0
    retry_all_ms: float = 10.0
    give_up_s: float = 30.0  # a call still unplaced after this counts as failed
    report_ms: float = 2000.0  # runner Status reaches the LB this often (LB default); 0 = never
    seed: int = 1


# -- the simulated world -------------------------------------------------------------

class _Model:
    __slots__ = ("fn_id",)

    def __init__(self, fn_id: str) -> None:
        self.fn_id = fn_id


class SimCall:
    """What ``order()`` reads of a call; one per function, reused by its calls."""

    __slots__ = ("model", "slot_hash_id", "attempts")

    def __init__(self, fn_id: str) -> None:
        self.model = _Model(fn_id)
        self.slot_hash_id = fn_id
        self.attempts = 0


class SimRunner:
    __slots__ = ("address", "index", "slots", "free", "warm", "busy", "calls")

    def __init__(self, index: int, slots: int) -> None:
        self.index = index
        self.address = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}:9190"
        self.slots = slots
        self.free = slots
        self.warm: OrderedDict[int, None] = OrderedDict()
        self.busy = 0.0  # slot-seconds of work done
        self.calls = 0


@dataclass
class PhaseStats:
    latencies: list[float] = field(default_factory=list)
    cold: int = 0
    nacks: int = 0
    failed: int = 0

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        n = len(lat)
        total = n + self.failed

        def pct(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000 if n else math.nan

        return {
            "calls": total,
            "mean_ms": statistics.fmean(lat) * 1000 if n else math.nan,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "cold_rate": self.cold / n if n else math.nan,
            "nacks_per_call": self.nacks / total if total else math.nan,
            "failed": self.failed,
        }


SimOrder = Callable[[Sequence[SimRunner], SimCall], Iterable[SimRunner]]


def sim_order(placer: BasePlacer) -> SimOrder:
    """The placer's own ``order``, typed for simulated runners and calls.

    They have every attribute ``order`` reads (``address``; ``model.fn_id``,
    ``slot_hash_id``), not the whole Runner/RunnerCall protocols.
    """
    order: SimOrder = placer.order  # type: ignore[assignment]
    return order


def _zipf_cum(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k ** s) for k in range(1, n + 1)))


def simulate(placer_name: str, cfg: SimConfig, c: float | None = None) -> dict[str, Any]:
    """Run the workload through one placer; returns per-phase stats and load spread."""
    rng = random.Random(cfg.seed)  # same seed -> same arrivals and functions for all
    now = 0.0
    # Fresh for two report intervals, as the LB sets it from its health interval.
    load = LoadTracker(fresh_for=max(2 * cfg.report_ms / 1000, 0.001) + 0.5, clock=lambda: now)
    placer = make_placer(placer_name, PlacerConfig(), Metrics(), load=load, c=c)
    runners = tuple(SimRunner(i, cfg.slots[i % len(cfg.slots)]) for i in range(cfg.runners))
    capacity = sum(r.slots for r in runners)
    rate = cfg.utilization * capacity / (cfg.exec_ms / 1000)
    calls = [SimCall(f"app-{i % 50}/fn-{i}") for i in range(cfg.functions)]
    fn_mean = [cfg.exec_ms / 1000 * rng.uniform(0.5, 1.5) for _ in range(cfg.functions)]
    # Popularity rank -> function, shuffled so ranks are not aligned with ids.
    by_rank = list(range(cfg.functions))
    rng.shuffle(by_rank)
    cum = _zipf_cum(cfg.functions, cfg.zipf_s)
    hot_fn = by_rank[min(cfg.functions - 1, 500)]
    n_hot_phase = int(cfg.calls * cfg.hot_phase)
    n_zipf = cfg.calls - n_hot_phase
    phases = {"zipf": PhaseStats(), "hot": PhaseStats()}

    ranks = rng.choices(range(cfg.functions), cum_weights=cum, k=cfg.calls)
    heap: list[tuple[float, int, int, Any]] = []
    seq = itertools.count()
    ARRIVE, FINISH, RETRY, REPORT = 0, 1, 2, 3
    t = 0.0
    for i in range(cfg.calls):
        t += rng.expovariate(rate)
        if i >= n_zipf and rng.random() < cfg.hot_share:
            fn = hot_fn
        else:
            fn = by_rank[ranks[i]]
        # [fn, arrival time, phase, nacks]; arrivals are pre-drawn so every
        # placer sees exactly the same sequence.
        heap.append((t, next(seq), ARRIVE, [fn, t, "zipf" if i < n_zipf else "hot", 0]))
    if cfg.report_ms > 0:
        heap.append((0.0, next(seq), REPORT, None))
    end_of_arrivals = t
    heapq.heapify(heap)
    jitter = [rng.uniform(0.8, 1.2) for _ in range(4096)]
    nack_s, retry_s = cfg.nack_ms / 1000, cfg.retry_all_ms / 1000
    cold_s, warm_cap = cfg.cold_ms / 1000, cfg.warm_cache
    order = sim_order(placer)
    started, finished = load.started, load.finished
    decided = 0

    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if kind == FINISH:
            r, busy = payload
            r.free += 1
            r.busy += busy
            finished(r.address)
            continue
        if kind == REPORT:
            # What Status polling would deliver: occupancy, capacity, warm set.
            for r in runners:
                load.update_reported(r.address, RunnerStatus(
                    active=r.slots - r.free, slots_total=r.slots, slots_free=r.free,
                    warm_slots=tuple(calls[f].slot_hash_id for f in r.warm)))
            if now < end_of_arrivals:
                heapq.heappush(heap, (now + cfg.report_ms / 1000, next(seq), REPORT, None))
            continue
        rec = payload
        fn = rec[0]
        stats = phases[rec[2]]
        tt = now
        placed = None
        decided += 1
        for r in order(runners, calls[fn]):
            if r.free > 0:
                placed = r
                break
            rec[3] += 1
            stats.nacks += 1
            tt += nack_s
        if placed is None:
            if tt + retry_s - rec[1] > cfg.give_up_s:
                stats.failed += 1
            else:
                heapq.heappush(heap, (tt + retry_s, next(seq), RETRY, rec))
            continue
        r = placed
        r.free -= 1
        r.calls += 1
        started(r.address)
        service = fn_mean[fn] * jitter[decided & 4095]
        w = r.warm
        if fn in w:
            w.move_to_end(fn)
        else:
            stats.cold += 1
            service += cold_s
            w[fn] = None
            if len(w) > warm_cap:
                w.popitem(last=False)
        done = tt + service
        stats.latencies.append(done - rec[1])
        heapq.heappush(heap, (done, next(seq), FINISH, (r, service)))

    duration = max(now, 1e-9)
    util = [r.busy / (r.slots * duration) for r in runners]
    mean_util = statistics.fmean(util)
    return {
        "placer": placer_name,
        "zipf": phases["zipf"].summary(),
        "hot": phases["hot"].summary(),
        "sim_seconds": duration,
        "offered_rate": rate,
        "util_mean": mean_util,
        "util_max_over_mean": max(util) / mean_util if mean_util else math.nan,
        "util_cv": statistics.pstdev(util) / mean_util if mean_util else math.nan,
    }


# -- key-space movement -------------------------------------------------------------

def _homes(placer: BasePlacer, runners: Sequence[SimRunner],
           calls: Sequence[SimCall]) -> list[str]:
    # The first runner an idle pool would try: the function's home.
    order = sim_order(placer)
    return [next(iter(order(runners, c))).address for c in calls]


def key_movement(n: int = 1000, functions: int = 10_000, seed: int = 1) -> list[dict[str, Any]]:
    """Share of functions whose home runner changes when one runner leaves or joins."""
    rng = random.Random(seed)
    calls = [SimCall(f"app-{i % 50}/fn-{i}") for i in range(functions)]
    base = [SimRunner(i, 1) for i in range(n)]
    newcomer = SimRunner(n, 1)
    mid = n // 2
    gone = rng.randrange(n)
    cases: dict[str, list[SimRunner]] = {
        "leave mid-list": base[:mid] + base[mid + 1:],
        "leave last": base[:-1],
        "leave random": [r for r in base if r.index != gone],
        "join at end": [*base, newcomer],
        "join mid-list": [*base[:mid], newcomer, *base[mid:]],
    }
    rows = []
    for name in ("ch", "chbl"):
        placer = make_placer(name, PlacerConfig(), Metrics(), load=LoadTracker())
        before = _homes(placer, base, calls)
        for case, members in cases.items():
            after = _homes(placer, members, calls)
            moved = sum(a != b for a, b in zip(before, after, strict=True)) / functions
            ideal = 1 / n if case.startswith("leave") else 1 / (n + 1)
            rows.append({"placer": name, "case": case, "moved": moved, "ideal": ideal})
    return rows


# -- decision cost ----------------------------------------------------------------------

def decision_cost(name: str, n: int, repeats: int = 5, decisions: int = 2000,
                  seed: int = 1) -> float:
    """Median µs to produce the first candidate, at moderate load, ring/pool cached."""
    rng = random.Random(seed)
    load = LoadTracker()
    placer = make_placer(name, PlacerConfig(), Metrics(), load=load)
    runners = tuple(SimRunner(i, 2) for i in range(n))
    calls = [SimCall(f"fn-{i}") for i in range(decisions)]
    for r in runners:  # about one call per runner in flight, unevenly
        for _ in range(rng.randrange(3)):
            load.started(r.address)
        # Fresh reports: capacity, and a few warm functions each (for ``warm``).
        load.update_reported(r.address, RunnerStatus(
            active=load.inflight(r.address), slots_total=r.slots,
            warm_slots=tuple(rng.choice(calls).slot_hash_id for _ in range(4))))
    order = sim_order(placer)
    next(iter(order(runners, calls[0])))  # build per-snapshot caches first
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in calls:
            next(iter(order(runners, c)))
        samples.append((time.perf_counter() - t0) / decisions * 1e6)
    return statistics.median(samples)


# -- overload: fn's NACK sweep vs a capacity-aware wait queue -------------------------------
#
# Time is integer microseconds here, so every probe schedule below is exact. Every call
# walks the runners in one order: from its function's home (a hash; one fixed function
# per client) onward in list order, the shape of ch/chbl's walk. The production
# placers are not called: at 8x overload sweep walkers make ~1,000 probes each per
# second at 1,000 runners, far too many to ask a Python ``order()`` for.

_US = 1_000_000
_MASK = (1 << 32) - 1
(_FINISH, _DONE, _TIMEOUT, _SEND, _CLAIM, _AT_RUNNER, _NACKED, _BACKOFF, _SNAPSHOT,
 _REPORT) = range(10)
OVERLOAD_MODES = ("sweep", "queue")


@dataclass(frozen=True)
class OverloadConfig:
    """Knobs of ``python -m bench.sim --overload`` (each is a flag of the same name)."""

    slots: int = 4  # per runner
    service_ms: float = 100.0  # each call takes this x U(1 - jitter, 1 + jitter)
    service_jitter: float = 0.1
    # One LB: issue 12's measured setup (2 runner stubs x 4 slots). A try at a full
    # stub waits up to its --nack-after-ms (10 ms) for a slot, then NACKs: 11 ms in all.
    single_runners: int = 2
    single_nack_ms: float = 11.0
    single_nack_wait_ms: float = 10.0
    # Several LBs: runners that NACK at once, a 1 ms round trip.
    lbs: int = 10
    runners: int = 1000
    nack_ms: float = 1.0
    nack_wait_ms: float = 0.0
    retry_all_ms: float = 10.0  # sweep: pause after a whole round of NACKs
    placer_timeout_s: float = 360.0  # fnlb's default --placer-timeout
    backoff_start_ms: float = 10.0  # queue: after every believed-free runner NACKed
    backoff_cap_ms: float = 1000.0
    report_interval_ms: float = 100.0  # queue: each LB gets every runner's occupancy this often
    staleness_ms: float = 50.0  # ... as it was this long before the report arrives
    piggyback: bool = True  # queue: a completion also reports its runner's occupancy
    single_warmup_s: float = 3.0
    single_measure_s: float = 30.0
    multi_warmup_s: float = 1.5
    multi_measure_s: float = 3.0
    max_events: int = 30_000_000  # per run; a run that needs more is an error
    seed: int = 1


@dataclass(frozen=True)
class World:
    """One scenario: LBs sharing runners, closed-loop clients per app."""

    lbs: int
    runners: int
    slots: int
    apps: tuple[int, ...]  # clients per app (apps are named a, b, ...)
    nack_ms: float  # a try at a full runner: from sending it to its NACK
    nack_wait_ms: float  # ... of which the runner waits for a slot to free
    warmup_s: float
    measure_s: float

    @property
    def clients(self) -> int:
        return sum(self.apps)


class OvCall:
    """One call of a closed-loop client; ``placed``/``done`` are µs, None until then."""

    __slots__ = ("id", "client", "app", "lb", "home", "sent", "placed", "done", "runner",
                 "nacks", "outcome", "key", "claims", "tag", "last_off", "backoffs")

    def __init__(self, cid: int, client: int, app: int, lb: int, home: int, sent: int) -> None:
        self.id, self.client, self.app, self.lb, self.home, self.sent = (
            cid, client, app, lb, home, sent)
        self.placed: int | None = None
        self.done: int | None = None
        self.runner = -1
        self.nacks = 0
        self.outcome: str | None = None  # "ok" or "timeout"
        self.key = 0  # sweep: position in the walker index
        self.claims: list[_FreeSlot] = []  # sweep: free slots this walker reaches first
        self.tag = 0  # queue: start-time fair queueing tag
        self.last_off = -1  # queue: offset from home of the last runner tried this round
        self.backoffs = 0


class _FreeSlot:
    """A free slot on a runner and the sweep walker that will probe it first."""

    __slots__ = ("r", "claimant", "tc", "ver")

    def __init__(self, r: int) -> None:
        self.r = r
        self.claimant: OvCall | None = None
        self.tc = 0
        self.ver = 0


class _OverloadEngine:
    """Runners, closed-loop clients, timeouts and accounting; subclasses place calls."""

    def __init__(self, world: World, cfg: OverloadConfig, keep_calls: bool = False) -> None:
        self.w, self.cfg = world, cfg
        n = world.runners
        self.n = n
        self.free = [world.slots] * n  # the truth, which only the runners know
        self.active = [0] * n
        self.nack = max(1, round(world.nack_ms * 1000))
        self.wait = round(world.nack_wait_ms * 1000)
        # LB -> runner (and back): half of what a NACK takes besides the runner's wait.
        self.half = (self.nack - self.wait) // 2
        retry = round(cfg.retry_all_ms * 1000)
        if not 0 <= self.wait < self.nack or self.wait > retry:
            # The sweep's probe arithmetic relies on both (one probe window at a time).
            raise ValueError("need 0 <= nack_wait_ms < nack_ms and nack_wait_ms <= "
                             "retry_all_ms")
        self.service = round(cfg.service_ms * 1000)
        self.timeout = round(cfg.placer_timeout_s * _US)
        self.warm_end = round(world.warmup_s * _US)
        self.end = self.warm_end + round(world.measure_s * _US)
        self.rng = random.Random(cfg.seed)
        self.jitter_rng = random.Random(cfg.seed + 1)
        self.heap: list[tuple[int, int, int, Any]] = []
        self.seq = itertools.count()
        self.now = 0
        self.events = 0
        self.unplaced: dict[int, OvCall] = {}
        self.keep_calls = keep_calls
        self.calls: list[OvCall] = []
        self.finished: list[OvCall] = []  # ended (ok or timeout) inside the window
        self.next_id = 0
        self.max_active = 0
        self.client_app: list[int] = []
        for app, k in enumerate(world.apps):
            self.client_app.extend([app] * k)
        # One function per client, so one home; clients spread over the LBs.
        self.client_home = [self.rng.randrange(n) for _ in self.client_app]
        for c in range(len(self.client_app)):  # start within one service time
            self.push(self.rng.randrange(max(1, self.service)), _SEND, c)

    def push(self, t: int, kind: int, payload: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    def run(self) -> dict[str, Any]:
        heap, end, limit = self.heap, self.end, self.cfg.max_events
        while heap and heap[0][0] <= end:
            self.events += 1
            if self.events > limit:
                raise RuntimeError(f"overload sim: more than {limit} events; raise "
                                   f"--max-events or shorten the run")
            t, _, kind, payload = heapq.heappop(heap)
            self.now = t
            if kind == _FINISH:  # at the runner
                r = payload.runner
                self.free[r] += 1
                self.active[r] -= 1
                self.on_runner_free(payload, r)
                self.push(t + self.half, _DONE, payload)
            elif kind == _DONE:  # the result is back at the LB
                self._finish(payload)
            elif kind == _TIMEOUT:
                if payload.outcome is None and payload.placed is None:
                    payload.outcome = "timeout"
                    self._ended(payload)
                    self.on_timeout(payload)
                    self._send(payload.client)
            elif kind == _SEND:
                self._send(payload)
            else:
                self.handle(kind, payload)
        return self._summary()

    def _send(self, client: int) -> None:
        now = self.now
        call = OvCall(self.next_id, client, self.client_app[client], client % self.w.lbs,
                      self.client_home[client], now)
        self.next_id += 1
        self.unplaced[call.id] = call
        if self.keep_calls:
            self.calls.append(call)
        if now + self.timeout <= self.end:
            self.push(now + self.timeout, _TIMEOUT, call)
        self.arrive(call)

    def place(self, call: OvCall, r: int) -> None:
        if call.placed is not None or call.outcome is not None or self.free[r] <= 0:
            raise AssertionError(f"call {call.id} placed twice, after its end, or on a full "
                                 f"runner {r}")
        self.free[r] -= 1
        self.active[r] += 1
        self.max_active = max(self.max_active, self.active[r])
        call.placed, call.runner = self.now, r
        del self.unplaced[call.id]
        j = self.cfg.service_jitter
        service = round(self.service * self.rng.uniform(1 - j, 1 + j))
        self.push(self.now + service, _FINISH, call)

    def _finish(self, call: OvCall) -> None:
        r = call.runner
        call.outcome = "ok"
        self._ended(call)
        self.on_finish(call, r)
        self._send(call.client)

    def _ended(self, call: OvCall) -> None:
        call.done = self.now
        if call.outcome == "timeout":
            self.unplaced.pop(call.id, None)
        if self.now >= self.warm_end:
            self.finished.append(call)

    # What a placement strategy implements.
    def arrive(self, call: OvCall) -> None:
        raise NotImplementedError

    def on_runner_free(self, call: OvCall, r: int) -> None:
        raise NotImplementedError

    def on_finish(self, call: OvCall, r: int) -> None:
        raise NotImplementedError

    def on_timeout(self, call: OvCall) -> None:
        raise NotImplementedError

    def handle(self, kind: int, payload: Any) -> None:
        raise NotImplementedError

    def _summary(self) -> dict[str, Any]:
        w = self.w
        ok = [c for c in self.finished if c.outcome == "ok"]
        window = w.measure_s
        capacity = w.runners * w.slots / (self.cfg.service_ms / 1000)

        def stats(calls: Sequence[OvCall]) -> dict[str, float]:
            lat = sorted((c.done or 0) - c.sent for c in calls)
            k = len(lat)

            def pct(p: float) -> float:
                return lat[min(k - 1, int(p * k))] / 1000 if k else math.nan

            return {"calls_per_s": k / window, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                    "max_ms": lat[-1] / 1000 if k else math.nan}

        res: dict[str, Any] = stats(ok)
        nacks = sum(c.nacks for c in self.finished)
        oldest = max((self.end - c.sent for c in self.unplaced.values()), default=0)
        res.update({
            "capacity_per_s": capacity,
            "goodput": res["calls_per_s"] / capacity,
            "ideal_ms": max(1.0, w.clients / w.runners / w.slots) * self.cfg.service_ms,
            "nacks_per_call": nacks / len(ok) if ok else math.nan,
            "timeouts": sum(c.outcome == "timeout" for c in self.finished),
            "oldest_waiting_ms": oldest / 1000,
            "waiting_at_end": len(self.unplaced),
            "max_runner_occupancy": self.max_active,
            "events": self.events,
            "apps": {chr(ord("a") + a): stats([c for c in ok if c.app == a])
                     for a in range(len(w.apps))},
        })
        return res


class _SweepSim(_OverloadEngine):
    """fn's placer loop: walk every runner (a NACK each), pause retry_all, walk again.

    Exact, without an event per probe: a waiting call's probe of the runner at offset
    k from its home reaches it at ``t0 + j*P + k*nack`` (walk j, ``P = n*nack +
    retry``, ``t0`` = half a round trip after the call reached the LB) and stays
    ``wait`` there. A slot that frees goes to the walker whose probe of that runner
    starts first (from ``wait`` ago on): with ``a = (t0 - home*nack) mod P`` that is
    the cyclic successor of a key among the walkers whose home is <= the runner (or
    > it, the key shifted by n*nack), a range query on a segment tree over homes
    holding sorted ``a`` keys. A new walker looks the other way, for the first free
    slot it would reach before the walker that holds it; a walker that loses a slot
    so looks again.
    """

    def __init__(self, world: World, cfg: OverloadConfig, keep_calls: bool = False) -> None:
        super().__init__(world, cfg, keep_calls)
        n = self.n
        self.period = n * self.nack + round(cfg.retry_all_ms * 1000)
        self.size = 1 << max(0, (n - 1).bit_length())
        self.tree: list[list[int]] = [[] for _ in range(2 * self.size)]
        self.walkers: dict[int, OvCall] = {}
        self.slots: list[list[_FreeSlot]] = [
            [_FreeSlot(r) for _ in range(world.slots)] for r in range(n)]
        self.freeidx = list(range(n))  # runners with a free slot, sorted

    def _claim(self, slot: _FreeSlot, walker: OvCall | None, t: int) -> None:
        slot.ver += 1
        slot.claimant = walker
        if walker is not None:
            slot.tc = t
            walker.claims.append(slot)
            self.push(t, _CLAIM, (slot, slot.ver))

    def _first_prober(self, slot: _FreeSlot) -> None:
        """Give ``slot`` to the walker whose probe of its runner starts first.

        A probe waits ``wait`` at the runner, so one that started that long ago is
        still there and takes the slot now (the runner serves its waiters in order).
        """
        r, n, nack, period, tree = slot.r, self.n, self.nack, self.period, self.tree
        now = self.now - self.wait
        best: tuple[int, int] | None = None
        for lo, hi, y in ((0, r + 1, (now - r * nack) % period),
                          (r + 1, n, (now - (r + n) * nack) % period)):
            ys = y << 32
            lo += self.size
            hi += self.size
            nodes = []
            while lo < hi:
                if lo & 1:
                    nodes.append(lo)
                    lo += 1
                if hi & 1:
                    hi -= 1
                    nodes.append(hi)
                lo >>= 1
                hi >>= 1
            for node in nodes:
                keys = tree[node]
                if keys:
                    i = bisect.bisect_left(keys, ys)
                    k = keys[i] if i < len(keys) else keys[0]
                    cand = (((k >> 32) - y) % period, k)
                    if best is None or cand < best:
                        best = cand
        if best is None:
            self._claim(slot, None, 0)
        else:
            self._claim(slot, self.walkers[best[1] & _MASK], max(self.now, now + best[0]))

    def _seek(self, walker: OvCall) -> None:
        """Claim the first free slot ``walker`` reaches before its current claimant."""
        todo = [walker]
        n, nack, period = self.n, self.nack, self.period
        now = self.now - self.wait  # a probe this old is still at its runner
        # Each round moves one slot to an earlier probe, so the chain ends; this bound
        # (every walker once per free slot) is never near.
        for _ in range(len(self.walkers) * (len(self.freeidx) * self.w.slots + 1) + 1):
            if not todo:
                return
            w = todo.pop()
            fi = self.freeidx
            if not fi:
                return
            t0 = w.sent + self.half
            tq = max(now, t0)
            q = (tq - t0) % period
            k0 = -(-q // nack)
            ptr = (w.home + k0) % n if k0 < n else w.home
            j = bisect.bisect_left(fi, ptr)
            m = len(fi)
            for step in range(m):  # in the order w will probe them
                r = fi[(j + step) % m]
                t = max(self.now, tq + (((r - w.home) % n) * nack - q) % period)
                target: _FreeSlot | None = None
                for s in self.slots[r]:
                    if s.claimant is None:
                        target = s
                        break
                    if t < s.tc and (target is None or s.tc > target.tc):
                        target = s
                if target is not None:
                    old = target.claimant
                    if old is not None and old.id in self.walkers:
                        old.claims.remove(target)
                        todo.append(old)
                    self._claim(target, w, t)
                    break
        raise AssertionError("sweep: claim chain did not settle")

    def _drop_walker(self, w: OvCall) -> None:
        i = w.home + self.size
        while i:
            keys = self.tree[i]
            del keys[bisect.bisect_left(keys, w.key)]
            i >>= 1
        del self.walkers[w.id]
        # Its other slots are handed on when their claim comes due, not now: no walker
        # present probes them before then (w was first), and a newer one that would
        # takes them in _seek. Eagerly, a walker at the head of a bunch of walkers
        # would hand the same k slots down the bunch, k*k queries.
        w.claims = []

    def arrive(self, call: OvCall) -> None:
        t0 = call.sent + self.half
        call.key = ((t0 - call.home * self.nack) % self.period) << 32 | call.id
        i = call.home + self.size
        while i:
            bisect.insort(self.tree[i], call.key)
            i >>= 1
        self.walkers[call.id] = call
        self._seek(call)

    def handle(self, kind: int, payload: Any) -> None:
        slot, ver = payload  # _CLAIM: the walker's probe reaches the free slot
        if ver != slot.ver:
            return
        w = slot.claimant
        assert w is not None
        if w.id not in self.walkers:  # placed or timed out since: the next prober takes it
            self._first_prober(slot)
            return
        r = slot.r
        self.slots[r].remove(slot)
        if not self.slots[r]:
            del self.freeidx[bisect.bisect_left(self.freeidx, r)]
        w.claims.remove(slot)
        walks, rem = divmod(self.now - w.sent - self.half, self.period)
        w.nacks = walks * self.n + rem // self.nack  # every probe before the one here
        self.place(w, r)
        self._drop_walker(w)

    def on_finish(self, call: OvCall, r: int) -> None:
        pass  # the LB keeps no view

    def on_runner_free(self, call: OvCall, r: int) -> None:
        slot = _FreeSlot(r)
        if not self.slots[r]:
            bisect.insort(self.freeidx, r)
        self.slots[r].append(slot)
        self._first_prober(slot)

    def on_timeout(self, call: OvCall) -> None:
        walks, rem = divmod(max(0, self.now - call.sent - self.half), self.period)
        call.nacks = walks * self.n + min(self.n, -(-rem // self.nack))
        self._drop_walker(call)


class _LBView:
    """One LB's queue and what it believes of each runner."""

    __slots__ = ("own", "placed", "others", "others_at", "full_at", "bfree", "queue",
                 "vtime", "app_finish")

    def __init__(self, n: int) -> None:
        self.own = [0] * n  # this LB's calls on the runner, tries included (LoadTracker)
        self.placed = [0] * n  # this LB's calls the runner is running
        self.others = [0] * n  # other LBs' calls there, as last reported
        self.others_at = [-1] * n
        self.full_at = [-1] * n  # a NACK's time, until a completion or a later report
        self.bfree = list(range(n))  # runners believed to have a free slot, sorted
        self.queue: list[tuple[int, int, OvCall]] = []
        self.vtime = 0
        self.app_finish: dict[int, int] = {}


class _QueueSim(_OverloadEngine):
    """Capacity-aware queue: wait for a believed-free slot, fair across apps.

    Start-time fair queueing (cost 1 per call, equal weights): a call's tag is
    max(virtual time, its app's last finish tag), so FIFO within an app. A woken
    call tries the believed-free runners in its order; a NACK marks that runner full
    until this LB's next completion there or a report taken after the NACK; when
    every believed-free runner NACKed, the call backs off (exponential, jittered,
    capped) and then queues again with its old tag.
    """

    def __init__(self, world: World, cfg: OverloadConfig, keep_calls: bool = False) -> None:
        super().__init__(world, cfg, keep_calls)
        self.lbs = [_LBView(self.n) for _ in range(world.lbs)]
        # Tries a full runner holds for up to ``wait``, in arrival order: (until, call).
        self.waiters: list[deque[tuple[int, OvCall]]] = [deque() for _ in range(self.n)]
        self.interval = max(1, round(cfg.report_interval_ms * 1000))
        self.staleness = round(cfg.staleness_ms * 1000)
        self.backoff_start = cfg.backoff_start_ms * 1000
        self.backoff_cap = cfg.backoff_cap_ms * 1000
        if world.lbs > 1:  # one LB knows every call; reports would tell it nothing
            for i in range(world.lbs):  # LBs poll out of step with each other
                self.push(self.interval * i // world.lbs, _SNAPSHOT, i)

    def _refresh(self, lb: _LBView, r: int) -> None:
        room = lb.full_at[r] < 0 and self.w.slots - lb.own[r] - lb.others[r] > 0
        bf = lb.bfree
        i = bisect.bisect_left(bf, r)
        there = i < len(bf) and bf[i] == r
        if room and not there:
            bf.insert(i, r)
        elif there and not room:
            del bf[i]

    def arrive(self, call: OvCall) -> None:
        lb = self.lbs[call.lb]
        call.tag = max(lb.vtime, lb.app_finish.get(call.app, 0))
        lb.app_finish[call.app] = call.tag + 1
        heapq.heappush(lb.queue, (call.tag, call.id, call))
        self._dispatch(lb)

    def _dispatch(self, lb: _LBView) -> None:
        q = lb.queue
        for _ in range(len(q)):  # each turn pops one entry
            if not (q and lb.bfree):
                return
            tag, _, call = heapq.heappop(q)
            if call.outcome is not None:  # timed out while queued
                continue
            lb.vtime = max(lb.vtime, tag)
            call.last_off = -1
            self._try_next(lb, call)

    def _try_next(self, lb: _LBView, call: OvCall) -> None:
        bf, n = lb.bfree, self.n
        nxt = call.last_off + 1
        if bf and nxt < n:
            i = bisect.bisect_left(bf, (call.home + nxt) % n)
            r = bf[i] if i < len(bf) else bf[0]
            off = (r - call.home) % n
            if off >= nxt:  # not past the end of this round
                call.last_off = off
                lb.own[r] += 1
                self._refresh(lb, r)
                self.push(self.now + self.half, _AT_RUNNER, (call, r))
                return
        call.backoffs += 1
        delay = min(self.backoff_cap, self.backoff_start * 2 ** min(call.backoffs - 1, 30))
        self.push(self.now + round(delay * self.jitter_rng.uniform(0.5, 1.0)), _BACKOFF, call)

    def handle(self, kind: int, payload: Any) -> None:
        if kind == _AT_RUNNER:
            call, r = payload
            if call.outcome is not None:  # timed out on the way: the LB cancels the try
                self.push(self.now + self.half, _NACKED, (call, r, False))
            elif self.free[r] > 0:
                self.lbs[call.lb].placed[r] += 1
                self.place(call, r)
            else:
                if self.wait:
                    self.waiters[r].append((self.now + self.wait, call))
                self.push(self.now + self.wait + self.half, _NACKED, (call, r, True))
        elif kind == _NACKED:
            call, r, nacked = payload
            if call.placed is not None:  # a slot freed while the runner held the try
                return
            lb = self.lbs[call.lb]
            lb.own[r] -= 1
            if nacked:
                call.nacks += 1
                lb.full_at[r] = self.now - self.half  # when the runner said no
            self._refresh(lb, r)
            if call.outcome is None:
                self._try_next(lb, call)
        elif kind == _BACKOFF:
            call = payload
            if call.outcome is None:
                lb = self.lbs[call.lb]
                heapq.heappush(lb.queue, (call.tag, call.id, call))
                self._dispatch(lb)
        elif kind == _SNAPSHOT:  # a Status poll: runner occupancy now, arriving later
            i = payload
            lb = self.lbs[i]
            others = [a - p for a, p in zip(self.active, lb.placed, strict=True)]
            self.push(self.now + self.staleness, _REPORT, (i, self.now, others))
            self.push(self.now + self.interval, _SNAPSHOT, i)
        elif kind == _REPORT:
            i, taken, others = payload
            lb = self.lbs[i]
            for r in range(self.n):
                if lb.others_at[r] < taken:
                    lb.others[r], lb.others_at[r] = others[r], taken
                if 0 <= lb.full_at[r] < taken:
                    lb.full_at[r] = -1
            slots = self.w.slots
            lb.bfree = [r for r in range(self.n) if lb.full_at[r] < 0
                        and slots - lb.own[r] - lb.others[r] > 0]
            self._dispatch(lb)

    def on_finish(self, call: OvCall, r: int) -> None:
        lb = self.lbs[call.lb]
        lb.own[r] -= 1
        lb.full_at[r] = -1
        if self.cfg.piggyback:
            lb.others[r] = self.active[r] - lb.placed[r]
            lb.others_at[r] = self.now
        self._refresh(lb, r)  # the engine's next _send dispatches, with that call queued too

    def on_runner_free(self, call: OvCall, r: int) -> None:
        self.lbs[call.lb].placed[r] -= 1
        waiting = self.waiters[r]
        for _ in range(len(waiting)):
            until, held = waiting.popleft()
            if until >= self.now and held.outcome is None:
                self.lbs[held.lb].placed[r] += 1  # its try is already in ``own``
                self.place(held, r)
                break

    def on_timeout(self, call: OvCall) -> None:
        pass  # a queued call is skipped when popped; a trying one stops at its NACK


def overload_run(mode: str, world: World, cfg: OverloadConfig | None = None,
                 keep_calls: bool = False) -> tuple[dict[str, Any], list[OvCall]]:
    """Simulate one scenario under ``sweep`` or ``queue``; (summary, every call if kept)."""
    cfg = cfg if cfg is not None else OverloadConfig()
    sims = {"sweep": _SweepSim, "queue": _QueueSim}
    if mode not in sims:
        raise ValueError(f"mode must be one of {OVERLOAD_MODES}, not {mode!r}")
    sim = sims[mode](world, cfg, keep_calls)
    t0 = time.perf_counter()
    res = sim.run()
    res["mode"] = mode
    res["wall_seconds"] = time.perf_counter() - t0
    return res, sim.calls


def overload_scenarios(cfg: OverloadConfig) -> dict[str, World]:
    """The default scenarios: one LB at 1x, 2x, 8x and a noisy neighbour; several LBs."""
    def one(*apps: int) -> World:
        return World(1, cfg.single_runners, cfg.slots, apps, cfg.single_nack_ms,
                     cfg.single_nack_wait_ms, cfg.single_warmup_s, cfg.single_measure_s)

    def many(*apps: int) -> World:
        return World(cfg.lbs, cfg.runners, cfg.slots, apps, cfg.nack_ms, cfg.nack_wait_ms,
                     cfg.multi_warmup_s, cfg.multi_measure_s)

    s1, sm = cfg.single_runners * cfg.slots, cfg.runners * cfg.slots
    lbs = f"{cfg.lbs} LBs x {cfg.runners} runners"
    return {
        "1 LB, 1x": one(s1),
        "1 LB, 2x": one(2 * s1),
        "1 LB, 8x": one(8 * s1),
        "noisy neighbour, 8x: app A 7/8 of clients, app B 1/8": one(7 * s1, s1),
        "noisy neighbour: app B alone": one(0, s1),
        f"{lbs}, 2x": many(2 * sm),
        f"{lbs}, 8x": many(8 * sm),
    }


def _no_nan(v: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_no_nan(x) for x in v]
    return v


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def overload_main(argv: Sequence[str] | None = None,
                  out: Callable[[str], Any] = print) -> dict[str, Any]:
    """``python -m bench.sim --overload``: sweep vs queue in every scenario."""
    d = OverloadConfig()
    p = argparse.ArgumentParser(
        prog="python -m bench.sim --overload",
        description="fn's NACK sweep vs a capacity-aware wait queue under overload "
                    "(closed-loop clients, simulated clock; see bench/sim.py)")
    for f, v in asdict(d).items():
        flag = "--" + f.replace("_", "-")
        if isinstance(v, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=v)
        else:
            p.add_argument(flag, type=type(v), default=v)
    p.add_argument("--scenario", action="append", default=[], metavar="TEXT",
                   help="run only scenarios whose name contains TEXT (repeatable)")
    p.add_argument("--json", default="bench-results/sim-overload.json", metavar="PATH",
                   help="write the results here ('' for nowhere)")
    args = p.parse_args(argv)
    cfg = OverloadConfig(**{f: getattr(args, f) for f in asdict(d)})
    wanted = args.scenario
    worlds = {k: w for k, w in overload_scenarios(cfg).items()
              if not wanted or any(x in k for x in wanted)}

    out(f"# bench.sim --overload: closed-loop clients, service {cfg.service_ms:g} ms "
        f"±{cfg.service_jitter:.0%}, {cfg.slots} slots per runner; sweep: retry-all "
        f"{cfg.retry_all_ms:g} ms; queue: backoff {cfg.backoff_start_ms:g} ms .. "
        f"{cfg.backoff_cap_ms:g} ms, reports every {cfg.report_interval_ms:g} ms "
        f"{cfg.staleness_ms:g} ms stale, piggy-backed on completions: "
        f"{'yes' if cfg.piggyback else 'no'}")
    results: dict[str, dict[str, Any]] = {}
    for name, world in worlds.items():
        row: dict[str, Any] = {"world": asdict(world)}
        for mode in OVERLOAD_MODES:
            row[mode], _ = overload_run(mode, world, cfg)
        results[name] = row
    alone = next((r for k, r in results.items() if "alone" in k), None)
    for name, row in results.items():
        w: World = worlds[name]
        sweep = row["sweep"]
        out(f"\n## {name}: {w.lbs} LB{'s' if w.lbs > 1 else ''}, {w.runners} runners x "
            f"{w.slots} slots, {w.clients} clients, a NACK {w.nack_ms:g} ms (runner "
            f"waits {w.nack_wait_ms:g} ms); capacity "
            f"{sweep['capacity_per_s']:.0f} calls/s, ideal FIFO latency "
            f"{sweep['ideal_ms']:.0f} ms; {w.measure_s:g} s measured after {w.warmup_s:g} s")
        headers = ["mode", "calls/s", "of capacity", "p50 ms", "p99 ms", "max ms",
                   "NACKs/call", "timeouts", "oldest waiting ms", "wall s"]
        noisy = len(w.apps) > 1 and all(w.apps)
        if noisy:
            headers += ["A calls/s", "B calls/s", "B p99 ms", "B p99 / alone"]
        rows = []
        for mode in OVERLOAD_MODES:
            r = row[mode]
            cells = [mode, r["calls_per_s"], f"{r['goodput']:.1%}", r["p50_ms"], r["p99_ms"],
                     r["max_ms"], r["nacks_per_call"], r["timeouts"], r["oldest_waiting_ms"],
                     r["wall_seconds"]]
            if noisy:
                b_alone = alone[mode]["apps"]["b"]["p99_ms"] if alone else math.nan
                r["b_p99_over_alone"] = _ratio(r["apps"]["b"]["p99_ms"], b_alone)
                cells += [r["apps"]["a"]["calls_per_s"], r["apps"]["b"]["calls_per_s"],
                          r["apps"]["b"]["p99_ms"], r["b_p99_over_alone"]]
            rows.append(cells)
        out(_table(headers, rows))

    summary = {name: {k: _ratio(row["queue"][k], row["sweep"][k])
                      for k in ("calls_per_s", "p99_ms", "max_ms", "nacks_per_call")}
               for name, row in results.items()}
    out("\n## queue / sweep")
    out(_table(["scenario", "calls/s", "p99", "max", "NACKs/call"],
               [[name, *(f"x{v:.3g}" if not math.isnan(v) else "-" for v in s.values())]
                for name, s in summary.items()]))
    report: dict[str, Any] = _no_nan(
        {"config": asdict(cfg), "scenarios": results, "queue_over_sweep": summary})
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        out(f"\nwrote {args.json}")
    return report


# -- report -------------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[h for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def main(argv: Sequence[str] | None = None, out: Callable[[str], Any] = print) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--overload" in argv:
        argv.remove("--overload")
        return overload_main(argv, out)
    d = SimConfig()
    p = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--placers", default=",".join(DEFAULT_PLACERS),
                   help=f"comma-separated, from: {', '.join(sorted(PLACERS))}")
    for f, v in asdict(d).items():
        if isinstance(v, tuple):
            p.add_argument("--" + f.replace("_", "-"), default=",".join(map(str, v)))
        else:
            p.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    p.add_argument("--c", type=float, default=None,
                   help="chbl/warm load bound c (as --chbl-c; default: its default)")
    p.add_argument("--cost-sizes", default="10,100,1000")
    p.add_argument("--json", default="", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    kwargs = {f: getattr(args, f) for f in asdict(d)}
    kwargs["slots"] = tuple(int(x) for x in str(args.slots).split(","))
    cfg = SimConfig(**kwargs)
    names = [n for n in args.placers.split(",") if n]

    out(f"# bench.sim: {cfg.runners} runners (slots {cfg.slots}), {cfg.calls} calls, "
        f"{cfg.functions} functions Zipf s={cfg.zipf_s}, warm cache {cfg.warm_cache}, "
        f"cold {cfg.cold_ms} ms, exec ~{cfg.exec_ms} ms, utilization {cfg.utilization}, "
        f"burst: {cfg.hot_phase:.0%} of calls, {cfg.hot_share:.0%} of them to one function")
    results = []
    for name in names:
        t0 = time.perf_counter()
        res = simulate(name, cfg, args.c)
        res["wall_seconds"] = time.perf_counter() - t0
        results.append(res)
    for phase in ("zipf", "hot"):
        out(f"\n## {phase} phase" + (" (Zipf popularity)" if phase == "zipf" else
                                     " (hot-key burst)"))
        out(_table(["placer", "calls", "mean ms", "p50 ms", "p99 ms", "cold rate",
                    "NACKs/call", "failed"],
                   [[r["placer"], r[phase]["calls"], r[phase]["mean_ms"], r[phase]["p50_ms"],
                     r[phase]["p99_ms"], r[phase]["cold_rate"], r[phase]["nacks_per_call"],
                     r[phase]["failed"]] for r in results]))
    out("\n## load spread (busy slot-time per runner / its slots, whole run)")
    out(_table(["placer", "mean util", "max/mean", "CV", "sim s", "wall s"],
               [[r["placer"], r["util_mean"], r["util_max_over_mean"], r["util_cv"],
                 r["sim_seconds"], r["wall_seconds"]] for r in results]))

    movement = key_movement(cfg.runners, 20_000, cfg.seed)
    out(f"\n## key-space movement: share of 20,000 functions whose home changes "
        f"({cfg.runners} runners)")
    out(_table(["placer", "case", "moved", "ideal (1/N)"],
               [[m["placer"], m["case"], f"{m['moved']:.2%}", f"{m['ideal']:.2%}"]
                for m in movement]))

    sizes = [int(x) for x in args.cost_sizes.split(",") if x]
    costs = {name: {n: decision_cost(name, n) for n in sizes} for name in names}
    out("\n## decision cost: µs to the first candidate (median of 5 x 2,000 decisions)")
    out(_table(["placer", *[f"n={n}" for n in sizes],
                f"x from n={sizes[0]} to n={sizes[-1]}"],
               [[name, *[costs[name][n] for n in sizes], costs[name][sizes[-1]] /
                 costs[name][sizes[0]]] for name in names]))
    report = {"config": asdict(cfg), "placers": results, "movement": movement,
              "decision_cost_us": {k: {str(n): v for n, v in c.items()}
                                   for k, c in costs.items()}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
