"""Overload benchmark: the wait queue (``--queue on``) vs fn's NACK sweep (``--queue off``).

    make bench-overload                  # or: python -m bench.overload
    python -m bench.overload --quick --cases 8x,burst

Every case starts fresh processes: 2 ``runner-stub --slots 4`` and one LB
(``fnlb serve --placer chbl --queue on|off``; two LBs for ``2lb``), waits until
the LB's Status polls report both runners healthy
(``fnlb_pool_runners{state="healthy"}``), then drives it from a separate client
process (bench._overload_clients; the LB's CPU is read from /proc by this one).
Every call holds a slot ``sleep_ms=100``: 8 slots give an ideal goodput of
80 calls/s. The two modes take turns, case by case, so the rest of the machine
weighs on both alike.

Cases (closed-loop clients; a warm-up, then a measured window):

* ``1x``, ``2x``, ``8x`` — 8, 16, 64 clients of one app;
* ``noisy`` — app A with 56 clients and app B with 8 at once; ``b-alone`` — app
  B's 8 clients alone, its baseline;
* ``2lb`` — two LBs sharing the 2 runners, 32 clients on each. The stubs log
  every accepted call (``--log-level debug``, ``msg="call accepted"
  call_id=...``) and every call has a unique ``call_id``: a call run twice is
  counted from those lines, checked against the stubs' own ``requestsHandled``;
* ``burst`` — 5,000 calls sent at once (``sleep_ms=1000``, ``--placer-timeout
  15s``, apps A and B alternating): CANCELLED answers (the server dropping
  calls), the LB's CPU while the calls wait (a window after the LB took them
  all in), its RSS growth (peak VmHWM minus RSS before), and how well
  completion order follows arrival order (Kendall tau over the completed calls
  of each app and connection: within one HTTP/2 connection, send order is
  arrival order; over 4 connections it is not quite, so the tau per app vs
  send order is shown too). The burst's LB CPU ms/call is the whole run's CPU
  per completed call.

Columns: calls/s and latency over the calls completed in the window; NACKs per
call = ``fnlb_placer_retries_total{reason="busy"}`` per completed call; LB CPU
(utime+stime, summed over both LBs for ``2lb``) per completed call and as % of
one core; errors by gRPC code over the whole run (our own cancels at the end
excluded). Prints the table, queue/off ratios and the targets of issue 12 with
met / NO; writes ``bench-results/overload.json`` and, with matplotlib,
``bench-results/overload.png`` (latency CDFs, queue vs off, per case).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from bench._overload_clients import Burst, ClosedLoop, burst, closed_loop, ping
from bench.burst import scrape
from bench.datapath import cpu_seconds, rss_kib
from fnlb.harness import Proc, ProcGroup, parse_logfmt
from fnlb.v1 import runner_pb2_grpc

__all__ = ["main", "kendall_tau", "percentile"]

RUNNERS = 2
SLOTS = 4
SLEEP_MS = 100
CAPACITY = RUNNERS * SLOTS * 1000 / SLEEP_MS  # calls/s with every slot always busy
MODES = ("queue", "off")
BURST_CHANNELS = 4


@dataclass(frozen=True)
class Case:
    name: str
    groups: tuple[tuple[int, str, int], ...]  # (LB index, app_id, clients)
    lbs: int = 1

    @property
    def clients(self) -> int:
        return sum(n for _, _, n in self.groups)


CASES = {c.name: c for c in (
    Case("1x", ((0, "a", 8),)),
    Case("2x", ((0, "a", 16),)),
    Case("8x", ((0, "a", 64),)),
    Case("noisy", ((0, "A", 56), (0, "B", 8))),
    Case("b-alone", ((0, "B", 8),)),
    Case("2lb", ((0, "a", 32), (1, "a", 32)), lbs=2),
)}
ALL_CASES = (*CASES, "burst")


# -- statistics ---------------------------------------------------------------

def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_xs:
        return 0.0
    return sorted_xs[min(len(sorted_xs) - 1, max(0, math.ceil(q * len(sorted_xs)) - 1))]


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-a of two paired sequences (tied pairs count as neither).

    >>> kendall_tau([1, 2, 3], [10, 20, 30]), kendall_tau([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    n = len(xs)
    if n < 2:
        return 1.0
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            a = (xs[i] > xs[j]) - (xs[i] < xs[j])
            b = (ys[i] > ys[j]) - (ys[i] < ys[j])
            s += a * b
    return s / (n * (n - 1) / 2)


def _lat_stats(lat_ms: list[float], window: float) -> dict[str, float]:
    xs = sorted(lat_ms)
    return {"completed": len(xs), "calls_per_s": len(xs) / window if window else 0.0,
            "p50_ms": percentile(xs, 0.50), "p99_ms": percentile(xs, 0.99),
            "max_ms": xs[-1] if xs else 0.0}


# -- processes ----------------------------------------------------------------

def _busy(m: dict[str, float]) -> float:
    return m.get("fnlb_placer_retries_total{reason=busy}", 0.0)


def _calls_total(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("fnlb_calls_total{"))


def _rss_mib(pid: int, field: str) -> float:
    return rss_kib(pid, field) / 1024


def _wait_healthy(lbs: Sequence[Proc], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    for lb in lbs:
        while scrape(lb.fields["metrics_addr"]).get(
                "fnlb_pool_runners{state=healthy}", 0.0) < RUNNERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"LB {lb.addr}: runners not healthy after {within} s")
            time.sleep(0.05)


@contextmanager
def _cluster(mode: str, lbs: int, lb_args: Sequence[str] = (),
             stub_args: Sequence[str] = ()) -> Iterator[tuple[list[Proc], list[Proc]]]:
    """Fresh stubs and LB(s), runners healthy; stopped at once on exit."""
    with ProcGroup(drain=False) as group:
        stubs = [group.spawn("runner_stub", ["--listen", "127.0.0.1:0", "--slots", str(SLOTS),
                                             *stub_args]) for _ in range(RUNNERS)]
        for s in stubs:
            s.wait_ready()
        args = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--admin-listen", "", "--runners", ",".join(s.addr for s in stubs),
                "--placer", "chbl", "--queue", "on" if mode == "queue" else "off", *lb_args]
        procs = [group.spawn("fnlb", args, name=f"fnlb-{i}") for i in range(lbs)]
        for p in procs:
            p.wait_ready()
        _wait_healthy(procs)
        yield stubs, procs


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


# -- closed-loop cases --------------------------------------------------------

def run_case(pool: cf.Executor, case: Case, mode: str, warmup: float,
             window: float) -> dict[str, Any]:
    twice = case.lbs > 1
    stub_args = ["--log-level", "debug"] if twice else []
    with _cluster(mode, case.lbs, stub_args=stub_args) as (stubs, lbs):
        t = time.monotonic()
        spec = ClosedLoop(targets=tuple(lb.addr for lb in lbs), groups=case.groups,
                          sleep_ms=SLEEP_MS, start_at=t + warmup, end_at=t + warmup + window,
                          id_prefix=f"{case.name}-{mode}", keep_ids=twice)
        fut = pool.submit(closed_loop, spec)
        _sleep_until(spec.start_at)
        m0 = [scrape(lb.fields["metrics_addr"]) for lb in lbs]
        c0 = [cpu_seconds(lb.pid) for lb in lbs]
        _sleep_until(spec.end_at)
        cpu = sum(cpu_seconds(lb.pid) - c for lb, c in zip(lbs, c0, strict=True))
        nacks = sum(_busy(scrape(lb.fields["metrics_addr"])) - _busy(m)
                    for lb, m in zip(lbs, m0, strict=True))
        out = fut.result(timeout=120)
        extra = _run_twice(stubs, out["ok_ids"]) if twice else {}
    lat: dict[str, list[float]] = collections.defaultdict(list)
    for app, t0, t1 in out["done"]:
        lat[app].append(1000 * (t1 - t0))
    every = [x for xs in lat.values() for x in xs]
    stats = _lat_stats(every, window)
    n = max(1, stats["completed"])
    return {"mode": mode, "case": case.name, "clients": case.clients, "lbs": case.lbs,
            "window_s": window, **stats, "nacks_per_call": nacks / n,
            "cpu_ms_per_call": 1000 * cpu / n, "cpu_pct": 100 * cpu / window,
            "errors": out["errors"], "error_samples": out["error_samples"],
            "client_cpu_pct": out["client_cpu_pct"],
            "per_app": {app: _lat_stats(xs, window) for app, xs in sorted(lat.items())},
            "latencies_ms": {app: [round(x, 2) for x in xs] for app, xs in sorted(lat.items())},
            **extra}


def _run_twice(stubs: Sequence[Proc], ok_ids: Sequence[str]) -> dict[str, Any]:
    """Count calls run twice from the stubs' per-call log lines, checked by their counters."""
    handled = 0
    for s in stubs:
        with grpc.insecure_channel(s.addr) as ch:
            handled += runner_pb2_grpc.RunnerStub(ch).Status(
                empty_pb2.Empty(), timeout=5).requestsHandled
    accepted: collections.Counter[str] = collections.Counter()
    for s in stubs:
        for line in s.read_lines():
            if 'msg="call accepted"' in line:
                accepted[parse_logfmt(line).get("call_id", "")] += 1
    return {"run_twice": sum(1 for n in accepted.values() if n > 1),
            "accepted_lines": sum(accepted.values()), "stub_requests_handled": handled,
            "ok_calls_not_in_stub_logs": sum(1 for i in ok_ids if i not in accepted),
            "ok_calls": len(ok_ids)}


# -- the burst ----------------------------------------------------------------

def run_burst(pool: cf.Executor, mode: str, calls: int, cpu_window: float,
              placer_timeout: float) -> dict[str, Any]:
    apps = ("A", "B")
    with _cluster(mode, 1, lb_args=["--placer-timeout", f"{placer_timeout:g}s"]) as (_, lbs):
        lb = lbs[0]
        maddr = lb.fields["metrics_addr"]
        m0 = scrape(maddr)
        rss0 = _rss_mib(lb.pid, "VmRSS")
        cpu_all0 = cpu_seconds(lb.pid)
        send_at = time.monotonic() + 0.5
        fut = pool.submit(burst, Burst(target=lb.addr, calls=calls, apps=apps,
                                       sleep_ms=1000, send_at=send_at, channels=BURST_CHANNELS,
                                       max_seconds=placer_timeout + 30))
        # The LB's CPU while the calls wait: once it has taken them all in
        # (and at least 4 s after sending), before the placer timeout ends them.
        _sleep_until(send_at)
        intake_s = float("nan")
        while time.monotonic() < send_at + 10:
            if _calls_total(scrape(maddr)) - _calls_total(m0) >= calls:
                intake_s = time.monotonic() - send_at
                break
            time.sleep(0.25)
        w0 = max(time.monotonic(), send_at + 4)
        w1 = min(w0 + cpu_window, send_at + placer_timeout - 2)
        _sleep_until(w0)
        c0 = cpu_seconds(lb.pid)
        _sleep_until(w1)
        cpu_wait = cpu_seconds(lb.pid) - c0
        depth = scrape(maddr).get("fnlb_queue_depth", 0.0)
        out = fut.result(timeout=placer_timeout + 60)
        cpu_all = cpu_seconds(lb.pid) - cpu_all0
        wall = time.monotonic() - send_at
        m1 = scrape(maddr)
        hwm = _rss_mib(lb.pid, "VmHWM")
        rss_after = _rss_mib(lb.pid, "VmRSS")
    rows: list[tuple[int, str, str, float]] = [(i, a, c, t) for i, a, c, t in out["calls"]]
    codes = collections.Counter(code for _, _, code, _ in rows)
    ok = [r for r in rows if r[2] == "OK"]
    # Arrival order is send order only within one connection: tau per app and
    # channel is FIFO vs arrival; tau per app over all channels is vs send order.
    taus: dict[str, float] = {}
    taus_sent: dict[str, float] = {}
    for app in apps:
        mine = [r for r in ok if r[1] == app]
        taus_sent[app] = kendall_tau([r[0] for r in mine], [r[3] for r in mine])
        for c in range(BURST_CHANNELS):
            sub = [r for r in mine if r[0] % BURST_CHANNELS == c]
            if len(sub) > 1:
                taus[f"{app}/ch{c}"] = kendall_tau([r[0] for r in sub], [r[3] for r in sub])
    unavailable = [t for _, _, code, t in rows if code == "UNAVAILABLE"]
    stats = _lat_stats([1000 * r[3] for r in ok], wall)
    n = max(1, len(ok))
    return {"mode": mode, "case": "burst", "clients": calls, "lbs": 1, **stats,
            "calls_per_s": len(ok) / (max(r[3] for r in ok) if ok else 1.0),
            "nacks_per_call": (_busy(m1) - _busy(m0)) / n,
            "cpu_ms_per_call": 1000 * cpu_all / n, "cpu_pct": 100 * cpu_wait / (w1 - w0),
            "cpu_pct_whole_run": 100 * cpu_all / wall, "cpu_window_s": [w0 - send_at, w1 - send_at],
            "intake_s": intake_s, "queue_depth_in_window": depth,
            "errors": {k: v for k, v in codes.items() if k != "OK"},
            "error_samples": list(out["details"]),
            "rss_before_mib": rss0, "rss_peak_mib": hwm, "rss_growth_mib": hwm - rss0,
            "rss_after_mib": rss_after,
            "rss_kib_per_call": 1024 * (hwm - rss0) / calls,
            "kendall_tau": taus, "kendall_tau_vs_send_order": taus_sent,
            "completed_per_app": {a: sum(1 for r in ok if r[1] == a) for a in apps},
            "last_unavailable_s": max(unavailable) if unavailable else None,
            "placer_timeout_s": placer_timeout,
            "latencies_ms": {"all": [round(1000 * r[3], 1) for r in ok]}}


# -- report -------------------------------------------------------------------

def _errs(e: dict[str, int]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(e.items())) or "0"


def table(results: Sequence[dict[str, Any]]) -> str:
    headers = ["mode", "case", "clients", "calls/s", "p50 ms", "p99 ms", "max ms",
               "NACKs/call", "LB CPU ms/call", "LB CPU %", "errors"]
    rows = []
    for r in results:
        rows.append([r["mode"], r["case"], str(r["clients"]), f"{r['calls_per_s']:.1f}",
                     f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['max_ms']:.0f}",
                     f"{r['nacks_per_call']:.2f}", f"{r['cpu_ms_per_call']:.2f}",
                     f"{r['cpu_pct']:.1f}", _errs(r["errors"])])
        for app, s in r.get("per_app", {}).items() if len(r.get("per_app", {})) > 1 else ():
            rows.append(["", f"  app {app}", "", f"{s['calls_per_s']:.1f}", f"{s['p50_ms']:.0f}",
                         f"{s['p99_ms']:.0f}", f"{s['max_ms']:.0f}", "", "", "", ""])
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in [headers, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ratios(by: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    out = []
    for case in ALL_CASES:
        q, o = by.get(("queue", case)), by.get(("off", case))
        if not q or not o:
            continue
        parts = []
        for key, label in (("calls_per_s", "calls/s"), ("p99_ms", "p99"), ("max_ms", "max"),
                           ("nacks_per_call", "NACKs/call"), ("cpu_ms_per_call", "CPU/call"),
                           ("cpu_pct", "CPU %")):
            parts.append(f"{label} {q[key] / o[key]:.2f}x" if o[key] else f"{label} -")
        out.append(f"  {case:<8} " + ", ".join(parts))
    return out


def targets(by: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the queue mode; off-mode values shown for comparison."""
    out: list[tuple[str, str, bool]] = []

    def add(text: str, case: str, key: Any, limit: float, fmt: str = "{:.2f}",
            le: bool = True) -> None:
        q = by.get(("queue", case))
        if q is None:
            return
        val = key(q)
        o = by.get(("off", case))
        off = f" (off: {fmt.format(key(o))})" if o else ""
        out.append((text, fmt.format(val) + off, val <= limit if le else val >= limit))

    ideal_ms = 1000 * CASES["8x"].clients / CAPACITY
    add("8x: NACKs per completed call <= 0.05", "8x", lambda r: r["nacks_per_call"], 0.05)
    if ("queue", "1x") in by:
        base = by[("queue", "1x")]["cpu_ms_per_call"]
        add(f"8x: LB CPU per call <= 1.5x the 1x case ({1.5 * base:.2f} ms)", "8x",
            lambda r: r["cpu_ms_per_call"], 1.5 * base, "{:.2f} ms")
    add(f"8x: goodput >= 97 % of {CAPACITY:.0f} calls/s", "8x",
        lambda r: 100 * r["calls_per_s"] / CAPACITY, 97.0, "{:.1f} %", le=False)
    add(f"8x: p99 <= 1.25x ideal FIFO {ideal_ms:.0f} ms ({1.25 * ideal_ms:.0f} ms)", "8x",
        lambda r: r["p99_ms"], 1.25 * ideal_ms, "{:.0f} ms")
    add(f"8x: max <= 1.5x ideal FIFO ({1.5 * ideal_ms:.0f} ms)", "8x",
        lambda r: r["max_ms"], 1.5 * ideal_ms, "{:.0f} ms")
    alone = by.get(("queue", "b-alone"))
    if alone:
        lim = 2 * alone["per_app"]["B"]["p99_ms"]
        add(f"noisy: app B p99 <= 2x alone ({alone['per_app']['B']['p99_ms']:.0f} ms -> "
            f"{lim:.0f} ms)", "noisy", lambda r: r["per_app"]["B"]["p99_ms"], lim, "{:.0f} ms")
    add(f"noisy: A + B goodput >= 97 % of {CAPACITY:.0f} calls/s (A takes the rest)", "noisy",
        lambda r: 100 * r["calls_per_s"] / CAPACITY, 97.0, "{:.1f} %", le=False)
    add("2lb: NACKs per call <= 0.5", "2lb", lambda r: r["nacks_per_call"], 0.5)
    add("2lb: 0 errors", "2lb", lambda r: sum(r["errors"].values()), 0, "{:.0f}")
    add("2lb: 0 calls run twice (stub logs)", "2lb", lambda r: r["run_twice"], 0, "{:.0f}")
    add("burst: 0 CANCELLED by the server", "burst",
        lambda r: r["errors"].get("CANCELLED", 0), 0, "{:.0f}")
    add("burst: LB CPU while calls wait <= 5 % of a core", "burst",
        lambda r: r["cpu_pct"], 5.0, "{:.1f} %")
    add("burst: LB RSS growth <= 100 MiB", "burst",
        lambda r: r["rss_growth_mib"], 100.0, "{:.0f} MiB")
    add("burst: FIFO within each app (min Kendall tau vs arrival >= 0.9)", "burst",
        lambda r: min(r["kendall_tau"].values()), 0.9, "{:.3f}", le=False)
    return out


def chart(results: Sequence[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib to get one)"
    cases = [c for c in ALL_CASES if any(r["case"] == c for r in results)]
    cols = min(4, len(cases))
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    from matplotlib.ticker import NullFormatter, ScalarFormatter  # type: ignore[import-not-found, unused-ignore]

    colours = {"queue": ("tab:blue", "tab:green"), "off": ("tab:orange", "tab:red")}
    for ax, case in zip(axes.flat, cases, strict=False):
        lo, hi = math.inf, 0.0
        for r in results:
            if r["case"] != case:
                continue
            for k, (app, xs) in enumerate(r["latencies_ms"].items()):
                if not xs:
                    continue
                xs = sorted(xs)
                lo, hi = min(lo, xs[0]), max(hi, xs[-1])
                label = r["mode"] + (f" app {app}" if len(r["latencies_ms"]) > 1 else "")
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                        label=label, color=colours[r["mode"]][k % 2],
                        linestyle="-" if r["mode"] == "queue" else "--")
        if lo > 0 and hi / lo > 5:  # a log axis only where it has decades to show
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(case)
        ax.set_xlabel("latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    fig.suptitle("fnlb overload: latency CDFs, --queue on vs off (python -m bench.overload)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(ALL_CASES),
                   help=f"comma-separated, of {', '.join(ALL_CASES)}")
    p.add_argument("--modes", default=",".join(MODES), help="queue, off or both")
    p.add_argument("--quick", action="store_true", help="halve the windows")
    p.add_argument("--window", type=float, default=8.0, help="measured seconds per case")
    p.add_argument("--warmup", type=float, default=1.5, help="load before the window opens")
    p.add_argument("--burst-calls", type=int, default=5000)
    p.add_argument("--burst-cpu-window", type=float, default=8.0,
                   help="seconds of LB CPU sampled while the burst's calls wait")
    p.add_argument("--burst-placer-timeout", type=float, default=15.0, help="seconds")
    p.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    if bad := [c for c in cases if c not in ALL_CASES]:
        p.error(f"unknown case(s) {', '.join(bad)}; known: {', '.join(ALL_CASES)}")
    if bad := [m for m in modes if m not in MODES]:
        p.error(f"unknown mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
    scale = 0.5 if args.quick else 1.0
    window, warmup = args.window * scale, args.warmup * scale
    burst_window = args.burst_cpu_window * scale
    print(f"# bench.overload: {RUNNERS} runner-stub x {SLOTS} slots, --placer chbl, "
          f"sleep_ms={SLEEP_MS} (ideal {CAPACITY:.0f} calls/s); warm-up {warmup:g} s, "
          f"window {window:g} s; burst {args.burst_calls} calls sleep_ms=1000 "
          f"--placer-timeout {args.burst_placer_timeout:g}s", flush=True)
    results: list[dict[str, Any]] = []
    t_all = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        pool.submit(ping).result(timeout=60)
        for case in cases:
            for mode in modes:
                t0 = time.monotonic()
                if case == "burst":
                    r = run_burst(pool, mode, args.burst_calls, burst_window,
                                  args.burst_placer_timeout)
                else:
                    r = run_case(pool, CASES[case], mode, warmup, window)
                results.append(r)
                print(f"  {case:<8} {mode:<5} {time.monotonic() - t0:5.1f} s: "
                      f"{r['calls_per_s']:.1f} calls/s, p99 {r['p99_ms']:.0f} ms, "
                      f"NACKs/call {r['nacks_per_call']:.2f}, errors {_errs(r['errors'])}",
                      flush=True)
    by = {(r["mode"], r["case"]): r for r in results}
    print(f"\n{table(results)}")
    print("\nLB CPU % is of one core (2lb: both LBs summed; burst: while the calls wait). "
          "Errors: whole run, by gRPC code.")
    if lines := ratios(by):
        print("\nqueue / off:")
        print("\n".join(lines))
    for r in results:
        if r["case"] == "2lb":
            print(f"\n2lb {r['mode']}: {r['accepted_lines']} calls accepted by the stubs "
                  f"(their requestsHandled: {r['stub_requests_handled']}), run twice: "
                  f"{r['run_twice']}; OK calls {r['ok_calls']}, of them missing from the stub "
                  f"logs: {r['ok_calls_not_in_stub_logs']}")
        if r["case"] == "burst":
            taus = ", ".join(f"{a} {t:.2f}" for a, t in r["kendall_tau"].items())
            sent = ", ".join(f"{a} {t:.2f}" for a, t in r["kendall_tau_vs_send_order"].items())
            lu = r["last_unavailable_s"]
            w0, w1 = r["cpu_window_s"]
            print(f"\nburst {r['mode']}: intake {r['intake_s']:.1f} s; LB CPU {r['cpu_pct']:.1f} % "
                  f"from {w0:.1f} to {w1:.1f} s ({r['cpu_pct_whole_run']:.0f} % whole run); "
                  f"RSS {r['rss_before_mib']:.0f} MiB -> peak {r['rss_peak_mib']:.0f} MiB "
                  f"({r['rss_kib_per_call']:.1f} KiB per call), {r['rss_after_mib']:.0f} MiB "
                  f"after; completed per app {r['completed_per_app']}; last UNAVAILABLE at "
                  + (f"{lu:.1f} s" if lu is not None else "-"))
            print(f"  Kendall tau per app/connection (vs arrival): {taus}; "
                  f"per app vs send order: {sent}")
            for s in r["error_samples"]:
                print(f"    {s}")
    if tg := targets(by):
        print("\nTargets (issue 12, queue mode; off in brackets):")
        w = max(len(t) for t, _, _ in tg)
        for text, val, ok in tg:
            print(f"  {'met' if ok else 'NO ':<3}  {text:<{w}}  {val}")
    print(f"\nwhole run {time.monotonic() - t_all:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overload.json").write_text(json.dumps(
        {"config": {"runners": RUNNERS, "slots": SLOTS, "sleep_ms": SLEEP_MS,
                    "capacity_calls_per_s": CAPACITY, "window_s": window, "warmup_s": warmup,
                    "burst_calls": args.burst_calls,
                    "burst_placer_timeout_s": args.burst_placer_timeout},
         "results": results,
         "targets": [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(by)]},
        indent=1))
    print(f"JSON: {out / 'overload.json'}")
    print(chart(results, out / "overload.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
