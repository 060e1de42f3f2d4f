"""Discrete-event simulation of placement at scale: the real placers, a simulated clock.

    python -m bench.sim                      # 1,000 runners, 100k calls, every placer
    python -m bench.sim --calls 1000000      # the full million (a few minutes)
    python -m bench.sim --placers ch,chbl --json out.json

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
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fnlb.metrics import Metrics
from fnlb.placers import PLACERS, BasePlacer, make_placer
from fnlb.placers.load import LoadTracker
from fnlb.runnerpool import PlacerConfig, RunnerStatus

__all__ = ["SimConfig", "simulate", "decision_cost", "key_movement", "main"]

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


def simulate(placer_name: str, cfg: SimConfig) -> dict[str, Any]:
    """Run the workload through one placer; returns per-phase stats and load spread."""
    rng = random.Random(cfg.seed)  # same seed -> same arrivals and functions for all
    now = 0.0
    # Fresh for two report intervals, as the LB sets it from its health interval.
    load = LoadTracker(fresh_for=max(2 * cfg.report_ms / 1000, 0.001) + 0.5, clock=lambda: now)
    placer = make_placer(placer_name, PlacerConfig(), Metrics(), load=load)
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
                   help="chbl/warm load bound c (sets FNLB_CHBL_C; default: its default)")
    p.add_argument("--cost-sizes", default="10,100,1000")
    p.add_argument("--json", default="", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    kwargs = {f: getattr(args, f) for f in asdict(d)}
    kwargs["slots"] = tuple(int(x) for x in str(args.slots).split(","))
    cfg = SimConfig(**kwargs)
    names = [n for n in args.placers.split(",") if n]
    if args.c is not None:
        os.environ["FNLB_CHBL_C"] = str(args.c)

    out(f"# bench.sim: {cfg.runners} runners (slots {cfg.slots}), {cfg.calls} calls, "
        f"{cfg.functions} functions Zipf s={cfg.zipf_s}, warm cache {cfg.warm_cache}, "
        f"cold {cfg.cold_ms} ms, exec ~{cfg.exec_ms} ms, utilization {cfg.utilization}, "
        f"burst: {cfg.hot_phase:.0%} of calls, {cfg.hot_share:.0%} of them to one function")
    results = []
    for name in names:
        t0 = time.perf_counter()
        res = simulate(name, cfg)
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
