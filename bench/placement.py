"""Placement benchmark: every placer, real processes, the same seeded workload.

    make bench-placement                 # or: python -m bench.placement
    python -m bench.placement --placers ch,chbl --zipf-calls 600

For each placer: start fresh runner stubs (heterogeneous slots, a cold-start
penalty, a small LRU warm cache) and an LB (``python -m fnlb serve --placer
NAME``), then send through the LB's front door (``fnlb.v1.LoadBalancer/Invoke``,
grpc.aio, fixed concurrency):

1. a Zipf phase: calls to ~40 functions with Zipf popularity; each function
   sleeps a few ms (``config.sleep_ms``, constant per function because the
   config is part of the warm-slot key);
2. a hot-key burst phase: the same, but half the calls go to one function.

Cold starts come from the runners' own counters (``Status.customStatus``
``cold_starts``/``warm_hits``), NACK retries from the LB's
``fnlb_placer_retries_total{reason="busy"}``. Results go to the terminal as a
table, to ``bench-results/placement.json`` and, when matplotlib is installed,
to ``bench-results/placement.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2
from prometheus_client.parser import text_string_to_metric_families

from fnlb.harness import Proc, start
from fnlb.placers import PLACERS
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2_grpc

__all__ = ["BenchConfig", "main"]

DEFAULT_PLACERS = ("naive", "ch", "p2c", "chbl", "warm")


@dataclass(frozen=True)
class BenchConfig:
    runner_slots: tuple[int, ...] = (2, 2, 2, 2, 2, 2, 1, 1)  # heterogeneous on purpose
    cold_start_ms: int = 50
    warm_cache: int = 2
    nack_after_ms: int = 10  # the stub's default: how long a runner holds a call for a slot
    functions: int = 40
    zipf_s: float = 1.1
    sleep_ms: tuple[int, int] = (2, 8)  # each function's own constant sleep, in this range
    concurrency: int = 12
    zipf_calls: int = 600
    hot_calls: int = 300
    hot_share: float = 0.5
    hot_rank: int = 20  # the burst hits a function of middling popularity
    call_timeout_s: float = 30.0
    seed: int = 7
    # Each repeat draws new function ids, so each placer's luck in how its hash
    # lays 40 functions over 8 unequal runners averages out; placers take turns
    # going first so that noise from the rest of the machine hits all alike.
    # Many short runs rather than a few long ones: latency columns are the
    # median over runs, which one run slowed by a busy machine cannot move.
    repeats: int = 5


@dataclass
class PhaseResult:
    calls: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    per_runner: Counter[str] = field(default_factory=Counter)  # calls by runner address
    cold_starts: int = 0
    warm_hits: int = 0
    nacks: float = 0.0
    spreads: list[float] = field(default_factory=list)  # one per run

    def merge(self, other: PhaseResult) -> None:
        self.calls += other.calls
        self.failed += other.failed
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.cold_starts += other.cold_starts
        self.warm_hits += other.warm_hits
        self.nacks += other.nacks
        self.spreads += other.spreads

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, int(p * n))] if n else math.nan

        starts = self.cold_starts + self.warm_hits
        return {
            "calls": self.calls,
            "failed": self.failed,
            "calls_per_s": self.calls / self.seconds if self.seconds else math.nan,
            "mean_ms": statistics.fmean(lat) if n else math.nan,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "cold_rate": self.cold_starts / starts if starts else math.nan,
            "nacks_per_call": self.nacks / self.calls if self.calls else math.nan,
            "spread_max_over_mean": statistics.fmean(self.spreads) if self.spreads else math.nan,
        }


# Latency-like columns: the median over runs. Rates (cold starts, NACKs) are
# pooled over all calls, which is exact and barely touched by machine noise.
_MEDIAN_OF_RUNS = ("calls_per_s", "mean_ms", "p50_ms", "p99_ms", "spread_max_over_mean")


def robust(pooled: PhaseResult, per_run: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = pooled.summary()
    for key in _MEDIAN_OF_RUNS:
        values = [r[key] for r in per_run if not math.isnan(r[key])]
        if values:
            out[key] = statistics.median(values)
    return out


# -- workload ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    fn_id: str
    sleep_ms: int


def workload(cfg: BenchConfig, repeat: int = 0) -> tuple[list[Call], list[Call]]:
    """The seeded call sequences of both phases; identical for every placer."""
    rng = random.Random(cfg.seed * 1000 + repeat)
    fns = [Call(f"fn-r{repeat}-{i:02d}", rng.randint(*cfg.sleep_ms))
           for i in range(cfg.functions)]
    by_rank = fns[:]
    rng.shuffle(by_rank)
    weights = [1 / (k ** cfg.zipf_s) for k in range(1, cfg.functions + 1)]
    zipf = rng.choices(by_rank, weights=weights, k=cfg.zipf_calls)
    hot = by_rank[min(cfg.hot_rank, cfg.functions - 1)]
    burst = [hot if rng.random() < cfg.hot_share else c
             for c in rng.choices(by_rank, weights=weights, k=cfg.hot_calls)]
    return zipf, burst


# -- processes ----------------------------------------------------------------------------

@contextlib.contextmanager
def cluster(cfg: BenchConfig, placer: str) -> Iterator[tuple[Proc, list[Proc]]]:
    """Fresh runner stubs and an LB; every process is stopped on the way out."""
    procs: list[Proc] = []
    try:
        def stub(slots: int) -> Proc:
            return start("runner_stub", [
                "--listen", "127.0.0.1:0", "--slots", str(slots),
                "--cold-start-ms", str(cfg.cold_start_ms), "--warm-cache", str(cfg.warm_cache),
                "--nack-after-ms", str(cfg.nack_after_ms)])

        # Started in parallel: Python start-up dominates and there are many.
        with ThreadPoolExecutor(len(cfg.runner_slots)) as pool:
            futures = [pool.submit(stub, s) for s in cfg.runner_slots]
            for f in futures:
                with contextlib.suppress(Exception):
                    procs.append(f.result())
            for f in futures:
                f.result()  # re-raise a start-up failure once all are tracked
        runners = procs[:]
        lb = start("fnlb", [
            "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--runners", ",".join(p.addr for p in runners), "--placer", placer,
            ])
        procs.append(lb)
        yield lb, runners
    finally:
        for p in procs:
            p.stop()


# -- measuring ----------------------------------------------------------------------------

async def runner_counters(channels: dict[str, grpc.aio.Channel]) -> dict[str, tuple[int, int]]:
    out = {}
    for addr, ch in channels.items():
        s = await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)
        out[addr] = (int(s.customStatus.get("cold_starts", "0")),
                     int(s.customStatus.get("warm_hits", "0")))
    return out


def lb_busy_retries(metrics_addr: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fnlb_placer_retries_total" and s.labels.get("reason") == "busy":
                return float(s.value)
    return 0.0


async def run_phase(stub: lb_pb2_grpc.LoadBalancerStub, calls: Sequence[Call],
                    cfg: BenchConfig, channels: dict[str, grpc.aio.Channel],
                    metrics_addr: str, slots: dict[str, int]) -> PhaseResult:
    res = PhaseResult()
    before = await runner_counters(channels)
    nacks0 = await asyncio.to_thread(lb_busy_retries, metrics_addr)
    queue = iter(enumerate(calls))

    async def worker() -> None:
        for i, call in queue:
            req = lb_pb2.InvokeRequest(fn_id=call.fn_id, app_id="bench", body=b"x",
                                       config={"sleep_ms": str(call.sleep_ms)},
                                       call_id=f"{call.fn_id}-{i}")
            t0 = time.perf_counter()
            try:
                resp = await stub.Invoke(req, timeout=cfg.call_timeout_s)
            except grpc.aio.AioRpcError:
                res.failed += 1
                continue
            res.latencies_ms.append((time.perf_counter() - t0) * 1000)
            res.per_runner[resp.runner] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
    res.seconds = time.perf_counter() - t0
    res.calls = len(calls)
    after = await runner_counters(channels)
    res.cold_starts = sum(after[a][0] - before[a][0] for a in after)
    res.warm_hits = sum(after[a][1] - before[a][1] for a in after)
    res.nacks = await asyncio.to_thread(lb_busy_retries, metrics_addr) - nacks0
    # Calls per slot on each runner, max over mean: 1.0 is a perfect spread.
    per_slot = [res.per_runner.get(a, 0) / n for a, n in slots.items()]
    mean_per_slot = statistics.fmean(per_slot)
    res.spreads.append(max(per_slot) / mean_per_slot if mean_per_slot else math.nan)
    return res


async def bench_placer(cfg: BenchConfig, placer: str, zipf: Sequence[Call],
                       burst: Sequence[Call]) -> dict[str, PhaseResult]:
    with cluster(cfg, placer) as (lb, runners):
        slots = {p.addr: s for p, s in zip(runners, cfg.runner_slots, strict=True)}
        channels = {p.addr: grpc.aio.insecure_channel(p.addr) for p in runners}
        lb_channel = grpc.aio.insecure_channel(lb.addr)
        try:
            stub = lb_pb2_grpc.LoadBalancerStub(lb_channel)
            metrics_addr = lb.fields["metrics_addr"]
            phases = {}
            for name, calls in (("zipf", zipf), ("hot", burst)):
                phases[name] = await run_phase(stub, calls, cfg, channels, metrics_addr, slots)
        finally:
            await lb_channel.close()
            for ch in channels.values():
                await ch.close()
    return phases


# -- report -------------------------------------------------------------------------------

COLUMNS = [("calls/s", "calls_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
           ("mean ms", "mean_ms"), ("cold rate", "cold_rate"), ("NACKs/call", "nacks_per_call"),
           ("failed", "failed"), ("spread", "spread_max_over_mean")]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
    return str(v)


def table(results: Sequence[dict[str, Any]], phase: str) -> str:
    headers = ["placer", *[c for c, _ in COLUMNS]]
    rows = [[r["placer"], *[_fmt(r[phase][k]) for _, k in COLUMNS]] for r in results]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in [headers, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def chart(results: Sequence[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib to get one)"
    names = [r["placer"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("mean_ms", "mean latency (ms)"), ("p99_ms", "p99 latency (ms)"),
              ("cold_rate", "cold-start rate"))
    x = range(len(names))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for k, phase in enumerate(("zipf", "hot")):
            ax.bar([i + (k - 0.5) * 0.4 for i in x], [r[phase][key] for r in results],
                   width=0.4, label=f"{phase} phase")
        ax.set_xticks(list(x), names)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("fnlb placement benchmark (python -m bench.placement)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


def main(argv: Sequence[str] | None = None) -> int:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--placers", default=",".join(n for n in DEFAULT_PLACERS if n in PLACERS))
    p.add_argument("--zipf-calls", type=int, default=d.zipf_calls)
    p.add_argument("--hot-calls", type=int, default=d.hot_calls)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    args = p.parse_args(argv)
    cfg = BenchConfig(zipf_calls=args.zipf_calls, hot_calls=args.hot_calls,
                      concurrency=args.concurrency, seed=args.seed, repeats=args.repeats)
    names = [n for n in args.placers.split(",") if n]
    unknown = [n for n in names if n not in PLACERS]
    if unknown:
        p.error(f"unknown placer(s) {', '.join(unknown)}; known: {', '.join(sorted(PLACERS))}")
    print(f"# bench.placement: {len(cfg.runner_slots)} runner stubs, slots "
          f"{list(cfg.runner_slots)}, cold start {cfg.cold_start_ms} ms, warm cache "
          f"{cfg.warm_cache}, nack after {cfg.nack_after_ms} ms; {cfg.functions} functions "
          f"Zipf s={cfg.zipf_s}, sleep {cfg.sleep_ms[0]}-{cfg.sleep_ms[1]} ms; concurrency "
          f"{cfg.concurrency}; {cfg.zipf_calls} Zipf calls then {cfg.hot_calls} burst calls "
          f"({cfg.hot_share:.0%} to one function); {cfg.repeats} repeats; seed {cfg.seed}",
          flush=True)
    pooled = {n: {"zipf": PhaseResult(), "hot": PhaseResult()} for n in names}
    runs: list[dict[str, Any]] = []
    for rep in range(cfg.repeats):
        zipf, burst = workload(cfg, rep)
        turn = names[rep % len(names):] + names[:rep % len(names)]
        for name in turn:
            t0 = time.perf_counter()
            phases = asyncio.run(bench_placer(cfg, name, zipf, burst))
            for phase, res in phases.items():
                pooled[name][phase].merge(res)
            runs.append({"repeat": rep, "placer": name,
                         **{ph: {**r.summary(), "per_runner": dict(r.per_runner)}
                            for ph, r in phases.items()}})
            print(f"  repeat {rep + 1}/{cfg.repeats} {name}: {time.perf_counter() - t0:.1f} s "
                  f"(zipf mean {phases['zipf'].summary()['mean_ms']:.1f} ms, cold "
                  f"{phases['zipf'].summary()['cold_rate']:.3f})", flush=True)
    results = [{"placer": n, **{ph: robust(pooled[n][ph], [r[ph] for r in runs
                                                          if r["placer"] == n])
                                for ph in ("zipf", "hot")}} for n in names]
    for phase, title in (("zipf", "Zipf phase"), ("hot", "hot-key burst phase")):
        print(f"\n## {title}\n{table(results, phase)}")
    print(f"\ncalls/s, latencies and spread: median of {cfg.repeats} runs per placer; cold "
          "rate, NACKs/call, failed: pooled over all runs. spread = max over mean of calls per "
          "slot across runners (1.0 = even).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "placement.json").write_text(json.dumps(
        {"config": asdict(cfg), "results": results, "runs": runs}, indent=2))
    print(f"\nJSON: {out / 'placement.json'}")
    print(chart(results, out / "placement.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
