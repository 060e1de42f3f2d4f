"""Data-path benchmark: the same load straight to runner stubs and through the LB.

    python -m bench.datapath                 # make bench: < 3 minutes
    python -m bench.datapath --leak-calls 100000 --reps 5

Starts ``--stubs`` runner stubs and one LB as real processes on 127.0.0.1, then
for every scenario (body size x concurrency) runs ``direct`` (the load
generator speaks fnlb.v1.Runner/TryExec to the stubs, round robin), ``lb``
(fnlb.v1.LoadBalancer/Invoke) and ``lb-fn`` (Invoke on a second LB whose
runners are ``--fn-runners`` fn-protocol doubles, ``tests/fn_double``: fn's
``/RunnerProtocol/Engage``, no fast paths, no ack) alternately, ``--reps``
times each, and reports
medians: calls/s, p50/p99 latency, and CPU ms per call of the LB, the stubs
and the load generator (from /proc/PID/stat, so every thread counts).
Then memory: LB RSS with 1,000 idle runners configured, with 1,000 calls in
flight, and before/after ``--leak-calls`` calls.

Prints a table and the issue-7 targets, and writes ``bench-results/datapath.json``.
Numbers are only comparable within one run: the machine is shared and noisy,
which is why direct and LB runs alternate and medians are quoted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench._load import LoadSpec, hold_calls, ping, run_load
from fnlb.harness import Proc, ProcGroup, reserved_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# name, body bytes, concurrency
SCENARIOS: dict[str, tuple[int, int]] = {
    "echo15-c1": (15, 1),
    "echo15-c16": (15, 16),  # not in the default set: issue 3's comparison point
    "echo15-c32": (15, 32),
    "1MiB-c1": (MIB, 1),
    "1MiB-c8": (MIB, 8),
}

TARGETS = {
    "lb_cpu_ms_per_call_c32": ("LB CPU ms/call, echo c=32", "<=", 0.6),
    "lb_added_p50_ms_c1": ("LB-added p50 ms, echo c=1", "<=", 0.5),
    "throughput_ratio_c32": ("LB/direct calls/s, echo c=32", ">=", 0.70),
    "latency_ratio_1mib_c1": ("LB/direct p50, 1 MiB c=1", "<=", 2.0),
}


# -- processes ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and its live descendants (an LB with --workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
        todo.extend(children.get(p, ()))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Cluster(ProcGroup):
    """The benchmark's processes, on port 0; stopped at once, not drained (the load is over).

    They log at info, the lowest level that prints the listening line with the
    bound addresses; neither the LB nor the stub logs a served call at info.
    """

    def __init__(self, lb_env: dict[str, str] | None = None, lb_module: str = "fnlb") -> None:
        super().__init__(drain=False)
        self.lb_env = lb_env or {}
        self.lb_module = lb_module

    def _spawn(self, name: str, module: str, args: Sequence[str],
               env: dict[str, str] | None = None, src: str = "") -> Proc:
        env = dict(env or {})
        if src:
            # `python -m` puts the working directory first on sys.path: run from
            # the other tree, or its packages would lose to ours.
            env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), os.getcwd()])
        return self.spawn(module, args, env, name=name, cwd=src or None)

    def fn_runner(self, name: str, slots: int) -> Proc:
        """An fn-protocol runner (the test double, its own process), started."""
        return self._spawn(name, "tests.fn_double", ["--listen", "127.0.0.1:0",
                                                     "--slots", str(slots), "--quiet"])

    def stub(self, name: str, args: Sequence[str], src: str = "") -> Proc:
        """A runner stub, started; ``wait_ready()`` it before use."""
        return self._spawn(name, "runner_stub", ["--listen", "127.0.0.1:0", *args], src=src)

    def lb(self, name: str, runners: Sequence[str], args: Sequence[str] = (),
           src: str = "", module: str = "") -> Proc:
        """An LB, started; ``src`` runs the fnlb package found in another source tree (A/B runs)."""
        module = module or self.lb_module
        module_args = ["serve"] if module == "fnlb" else ["fnlb", "serve"]
        # Env rather than a flag: LB versions without an admin port ignore it.
        env = {**self.lb_env, "FNLB_ADMIN_LISTEN": "127.0.0.1:0"}
        return self._spawn(name, module, [
            *module_args, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--runners", ",".join(runners), *args], env,
            src=src if os.path.abspath(src or ".") != os.getcwd() else "")


def metric_value(proc: Proc, name: str) -> float | None:
    with urllib.request.urlopen(f"http://{proc.fields['metrics_addr']}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


# -- load runs ---------------------------------------------------------------


def pctl(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, stubs: list[Proc],
                 lbs: dict[str, Proc], fn_runners: Sequence[Proc] = ()) -> None:
        self.args = args
        self.cluster = cluster
        self.stubs = stubs
        self.fn_runners = list(fn_runners)
        # mode name ("lb", "lb:VARIANT", "lb-fn", "lb-fn:VARIANT") -> process
        self.lbs = lbs
        self.lb = lbs["lb"]
        self.pool = cf.ProcessPoolExecutor(max_workers=args.client_procs,
                                           mp_context=multiprocessing.get_context("spawn"))
        # Start every worker before any window opens (imports take a while).
        list(self.pool.map(ping, range(args.client_procs)))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def procs_for(self, concurrency: int) -> int:
        return max(1, min(concurrency, self.args.client_procs if concurrency >= 8 else 1))

    def run(self, mode: str, body_size: int, concurrency: int, *, duration: float | None = None,
            calls: int = 0) -> dict[str, Any]:
        """One measured run; returns throughput, latency and CPU per process kind."""
        a = self.args
        duration = a.duration if duration is None else duration
        nprocs = self.procs_for(concurrency)
        lb = self.lbs.get(mode, self.lb)
        targets = (tuple(s.addr for s in self.stubs) if mode == "direct" else (lb.addr,))
        start_at = time.monotonic() + 0.3 + (0 if calls else a.warmup)
        end_at = start_at + duration
        specs = []
        for i in range(nprocs):
            share = concurrency // nprocs + (1 if i < concurrency % nprocs else 0)
            specs.append(LoadSpec(
                mode=mode, targets=targets, concurrency=share, body_size=body_size,
                start_at=start_at, end_at=end_at, lb_connections=a.lb_connections,
                calls=(calls // nprocs + (1 if i < calls % nprocs else 0)) if calls else 0))
        runners = self.fn_runners if mode.startswith("lb-fn") else self.stubs
        server_pids = {"lb": [lb.pid], "stubs": [s.pid for s in runners]}

        def sample() -> dict[str, float]:
            out = {k: sum(tree_cpu_seconds(p) for p in pids) for k, pids in server_pids.items()}
            out["machine"] = machine_busy_seconds()
            return out

        futures = [self.pool.submit(run_load, s) for s in specs]
        if calls:
            before = sample()
            t0 = time.monotonic()
            results = [f.result() for f in futures]
            wall = time.monotonic() - t0
            after = sample()
        else:
            time.sleep(max(0.0, start_at - time.monotonic()))
            before = sample()
            time.sleep(max(0.0, end_at - time.monotonic()))
            after = sample()
            wall = duration
            results = [f.result() for f in futures]
        lat = array("d")
        for r in results:
            lat.frombytes(r["latencies"])
        lats = sorted(lat)
        ok = sum(r["ok"] for r in results)
        n = max(ok, 1)
        client_cpu = sum(r["cpu_s"] for r in results)
        out = {
            "mode": mode, "body_bytes": body_size, "concurrency": concurrency,
            "client_procs": nprocs, "calls": ok,
            "errors": sum(r["errors"] for r in results),
            "nacks": sum(r["nacks"] for r in results),
            "bad": sum(r["bad"] for r in results),
            "error_samples": [e for r in results for e in r["error_samples"]][:3],
            "calls_per_s": ok / wall,
            "p50_ms": pctl(lats, 0.50) * 1000,
            "p99_ms": pctl(lats, 0.99) * 1000,
            "lb_cpu_ms_per_call": (after["lb"] - before["lb"]) * 1000 / n,
            "stubs_cpu_ms_per_call": (after["stubs"] - before["stubs"]) * 1000 / n,
            "client_cpu_ms_per_call": client_cpu * 1000 / n,
            "lb_cpu_pct": (after["lb"] - before["lb"]) * 100 / wall,
            "client_cpu_pct_max": max(r["cpu_s"] / max(r["wall_s"], 1e-9) for r in results) * 100,
            "wall_s": wall,
            # CPU used by processes outside this benchmark: the noise of a shared box.
            "foreign_cpu_pct": max(0.0, (after["machine"] - before["machine"])
                                   - (after["lb"] - before["lb"])
                                   - (after["stubs"] - before["stubs"]) - client_cpu)
                               * 100 / wall,
        }
        if out["errors"] or out["bad"]:
            print(f"  ! {mode} {body_size}B c={concurrency}: {out['errors']} errors, "
                  f"{out['bad']} bad answers {out['error_samples']}", flush=True)
        return out


_MEDIAN_KEYS = ("calls_per_s", "p50_ms", "p99_ms", "lb_cpu_ms_per_call",
                "stubs_cpu_ms_per_call", "client_cpu_ms_per_call", "lb_cpu_pct",
                "client_cpu_pct_max", "foreign_cpu_pct")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: statistics.median(r[k] for r in runs) for k in _MEDIAN_KEYS}
    for k in ("calls", "errors", "nacks", "bad"):
        out[k] = sum(r[k] for r in runs)
    out["client_procs"] = runs[0]["client_procs"]
    return out


def run_scenarios(bench: Bench, names: Sequence[str], reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        body, conc = SCENARIOS[name]
        modes = [m for m in ("direct", *bench.lbs)
                 if not bench.args.paths or m in bench.args.paths]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for rep in range(reps):
            # Rotate the order so a slow drift of the machine hits every path alike.
            k = rep % len(modes)
            for mode in modes[k:] + modes[:k]:
                runs[mode].append(bench.run(mode, body, conc))
        results[name] = {mode: {"median": medians(r), "runs": r} for mode, r in runs.items()}
        print("  " + f"{name:<11} " + " | ".join(
            f"{mode} {m['calls_per_s']:6.0f}/s p50 {m['p50_ms']:6.2f} ms"
            + ("" if mode == "direct" else f" {m['lb_cpu_ms_per_call']:.3f} CPU-ms")
            for mode, m in ((mo, results[name][mo]["median"]) for mo in modes)), flush=True)
    return results


# -- profile -----------------------------------------------------------------


def _py_spy() -> str | None:
    import shutil

    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_lb(bench: Bench, seconds: float, native: bool, outdir: Path,
               scenario: str = "echo15-c32", path: str = "lb") -> dict[str, Any]:
    """py-spy the LB under one scenario's load; write collapsed stacks and a top list."""
    exe = _py_spy()
    if exe is None:
        print("  profile: py-spy not found (pip install py-spy)", flush=True)
        return {}
    outdir.mkdir(parents=True, exist_ok=True)
    raw = outdir / ("lb-profile.txt" if path == "lb" else f"{path.replace(':', '-')}-profile.txt")
    cmd = [exe, "record", "--pid", str(bench.lbs[path].pid), "--format", "raw",
           "--duration", str(int(seconds)), "--output", str(raw)]
    # --native must stop the process for each sample: sample less often then.
    cmd += ["--native", "--rate", "50"] if native else ["--nonblocking", "--rate", "200"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach before the load starts
    body, conc = SCENARIOS[scenario]
    load = bench.run(path, body, conc, duration=seconds)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        print(f"  profile: py-spy failed: {err.decode(errors='replace')[-500:]}", flush=True)
        return {}
    top = top_costs(raw.read_text())
    print(f"  profile: {load['calls_per_s']:.0f} calls/s; collapsed stacks in {raw}", flush=True)
    print(fmt_top(top), flush=True)
    return {"raw": str(raw), "calls_per_s": load["calls_per_s"], "top": top}


def top_costs(collapsed: str, n: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [f.split(" (")[0] + " " + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                  if " (" in f else f for f in stack.split(";")]
        # py-spy puts the thread first; skip it so functions are compared
        frames = [f for f in frames if not f.startswith("thread ") and not f.startswith("process ")]
        if not frames:
            continue
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v * 100 / max(total, 1)) for k, v in
                sorted(d.items(), key=lambda kv: -kv[1])[:n]]
    return {"samples": total, "self": top(selfs), "inclusive": top(incl)}


def fmt_top(top: dict[str, Any], n: int = 15) -> str:
    lines = [f"    {'self %':>6}  function ({top['samples']} samples)"]
    lines += [f"    {pct:6.1f}  {name}" for name, pct in top["self"][:n]]
    lines.append(f"    {'incl %':>6}  function")
    lines += [f"    {pct:6.1f}  {name}" for name, pct in top["inclusive"][:n]]
    return "\n".join(lines)


# -- memory ------------------------------------------------------------------


def wait_settled_rss(pid: int, seconds: float) -> int:
    time.sleep(seconds)
    return rss_kib(pid)


def memory_idle_runners(cluster: Cluster, n: int, observe_s: float) -> dict[str, Any]:
    with contextlib.ExitStack() as ports:
        # n ports nothing listens on, reserved while the LB keeps dialling them:
        # they stay refused, as a bound-then-released port might not.
        addrs = [f"127.0.0.1:{ports.enter_context(reserved_port())}" for _ in range(n)]
        return _idle_runners(cluster, addrs, observe_s)


def _idle_runners(cluster: Cluster, addrs: list[str], observe_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    lb = cluster.lb("lb-idle", addrs).wait_ready(timeout=120)
    ready_s = time.monotonic() - t0
    rss_ready = rss_kib(lb.pid)
    c0 = cpu_seconds(lb.pid)
    time.sleep(observe_s)
    out = {
        "runners": len(addrs), "startup_s": ready_s, "rss_ready_kib": rss_ready,
        "rss_kib": rss_kib(lb.pid),
        "idle_cpu_pct": (cpu_seconds(lb.pid) - c0) * 100 / observe_s,
        "threads": int(next(line.split()[1] for line in open(f"/proc/{lb.pid}/status")
                            if line.startswith("Threads:"))),
        "fds": len(os.listdir(f"/proc/{lb.pid}/fd")),
    }
    cluster.stop(lb)
    return out


def memory_inflight(bench: Bench, n: int, sleep_ms: int) -> dict[str, Any]:
    lb = bench.lb
    rss_before = rss_kib(lb.pid)
    fut = bench.pool.submit(hold_calls, lb.addr, n, sleep_ms)
    peak_inflight = 0.0
    rss_at_peak = 0
    deadline = time.monotonic() + sleep_ms / 1000 * 0.8
    while time.monotonic() < deadline:
        inflight = metric_value(lb, "fnlb_calls_inflight") or 0.0
        if inflight >= peak_inflight:
            peak_inflight, rss_at_peak = inflight, rss_kib(lb.pid)
        if inflight >= n:
            time.sleep(0.2)
            rss_at_peak = max(rss_at_peak, rss_kib(lb.pid))
            break
        time.sleep(0.1)
    outcome = fut.result()
    return {"calls": n, "held_ms": sleep_ms, "peak_inflight": peak_inflight,
            "rss_before_kib": rss_before, "rss_inflight_kib": rss_at_peak,
            "rss_after_kib": wait_settled_rss(lb.pid, 0.5), **outcome}


def memory_leak(bench: Bench, total: int, steps: int = 4) -> dict[str, Any]:
    """RSS of the LB after each of ``steps`` equal slices of ``total`` echo calls (c=32)."""
    lb = bench.lb
    per = max(1, total // steps)
    bench.run("lb", 15, 32, calls=min(per, 5000))  # warm-up: allocator pools, caches
    samples = [rss_kib(lb.pid)]
    done = 0
    t0 = time.monotonic()
    for _ in range(steps):
        r = bench.run("lb", 15, 32, calls=per)
        done += r["calls"]
        samples.append(rss_kib(lb.pid))
    wall = time.monotonic() - t0
    growth = samples[-1] - samples[0]
    second_half = samples[-1] - samples[len(samples) // 2]
    return {"calls": done, "wall_s": wall, "rss_samples_kib": samples,
            "growth_kib": growth, "growth_second_half_kib": second_half,
            "bytes_per_call": growth * 1024 / max(done, 1)}


# -- report ------------------------------------------------------------------


def fmt_table(results: dict[str, Any]) -> str:
    head = (f"{'scenario':<11} {'path':<10} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'LB cpu':>7} {'stubs':>7} {'client':>7} {'cl.%max':>7} {'procs':>5} {'other':>5}")
    sub = (f"{'':<11} {'':<10} {'':>8} {'':>8} {'':>8} {'ms/call':>7} {'ms/call':>7} "
           f"{'ms/call':>7} {'core':>7} {'':>5} {'cpu%':>5}")
    lines = [head, sub, "-" * len(head)]
    for name, modes in results.items():
        for mode in modes:
            m = modes[mode]["median"]
            lbcpu = f"{m['lb_cpu_ms_per_call']:7.3f}" if mode != "direct" else f"{'-':>7}"
            lines.append(
                f"{name:<11} {mode:<10} {m['calls_per_s']:8.0f} {m['p50_ms']:8.3f} "
                f"{m['p99_ms']:8.3f} {lbcpu} {m['stubs_cpu_ms_per_call']:7.3f} "
                f"{m['client_cpu_ms_per_call']:7.3f} {m['client_cpu_pct_max']:7.0f} "
                f"{m['client_procs']:>5} {m['foreign_cpu_pct']:5.0f}")
    return "\n".join(lines)


def paired(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """For each variant: median over reps of lb/variant ratios, each rep paired in time
    (``lb-fn`` against its own variants ``lb-fn:NAME``, keyed "lb-fn vs lb-fn:NAME").

    Pairs ran back to back, so they saw the same machine: on a noisy box these
    ratios are steadier than comparing medians of each path.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, modes in results.items():
        for mode in modes:
            base, sep, _ = mode.partition(":")
            if not sep or base not in modes:
                continue
            pairs = list(zip(modes[base]["runs"], modes[mode]["runs"], strict=False))
            key = mode if base == "lb" else f"{base} vs {mode}"
            out.setdefault(key, {})[name] = {
                k: statistics.median(a[k] / b[k] for a, b in pairs if b[k])
                for k in ("lb_cpu_ms_per_call", "calls_per_s", "p50_ms")}
    return out


def fmt_paired(p: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for mode, scen in p.items():
        base, _, _ = mode.partition(" vs ")
        if base == mode:
            base, mode = "lb", f"lb vs {mode}"
        lines.append(f"{mode} (median of paired ratios; < 1 = {base} uses less / is faster):")
        for name, r in scen.items():
            lines.append(f"  {name:<11} LB CPU/call x{r['lb_cpu_ms_per_call']:.3f}   "
                         f"calls/s x{r['calls_per_s']:.3f}   p50 x{r['p50_ms']:.3f}")
    return "\n".join(lines)


def fn_vs_fnlb(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Through the LB, fn protocol (``lb-fn``) against fnlb's (``lb``): medians and
    the median of paired fn/fnlb ratios, per scenario that ran both."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    keys = ("lb_cpu_ms_per_call", "calls_per_s", "p50_ms", "p99_ms")
    for name, modes in results.items():
        if "lb" not in modes or "lb-fn" not in modes:
            continue
        pairs = list(zip(modes["lb"]["runs"], modes["lb-fn"]["runs"], strict=False))
        out[name] = {
            "fnlb": {k: modes["lb"]["median"][k] for k in keys},
            "fn": {k: modes["lb-fn"]["median"][k] for k in keys},
            "ratio": {k: statistics.median(b[k] / a[k] for a, b in pairs if a[k]) for k in keys},
        }
    return out


def fmt_fn_vs_fnlb(r: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["via LB, fn protocol (lb-fn) vs fnlb protocol (lb); ratio = fn/fnlb, "
             "median of paired runs",
             f"{'scenario':<11} {'':<6} {'LB CPU-ms':>10} {'calls/s':>8} {'p50 ms':>8} "
             f"{'p99 ms':>8}"]
    for name, v in r.items():
        for row, fmt in (("fnlb", "{:10.3f}"), ("fn", "{:10.3f}"), ("ratio", "{:9.2f}x")):
            m = v[row]
            cps = f"{m['calls_per_s']:7.2f}x" if row == "ratio" else f"{m['calls_per_s']:8.0f}"
            lat = "{:7.2f}x" if row == "ratio" else "{:8.3f}"
            lines.append(f"{name if row == 'fnlb' else '':<11} {row:<6} "
                         f"{fmt.format(m['lb_cpu_ms_per_call'])} {cps} "
                         f"{lat.format(m['p50_ms'])} {lat.format(m['p99_ms'])}")
    return "\n".join(lines)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}

    def med(name: str, mode: str, key: str) -> float | None:
        if name not in results:
            return None
        return float(results[name][mode]["median"][key])

    if "echo15-c32" in results:
        out["lb_cpu_ms_per_call_c32"] = med("echo15-c32", "lb", "lb_cpu_ms_per_call")  # type: ignore[assignment]
        out["throughput_ratio_c32"] = (med("echo15-c32", "lb", "calls_per_s")  # type: ignore[operator]
                                       / med("echo15-c32", "direct", "calls_per_s"))
    if "echo15-c1" in results:
        out["lb_added_p50_ms_c1"] = (med("echo15-c1", "lb", "p50_ms")  # type: ignore[operator]
                                     - med("echo15-c1", "direct", "p50_ms"))
        out["lb_cpu_ms_per_call_c1"] = med("echo15-c1", "lb", "lb_cpu_ms_per_call")  # type: ignore[assignment]
    if "1MiB-c1" in results:
        out["latency_ratio_1mib_c1"] = (med("1MiB-c1", "lb", "p50_ms")  # type: ignore[operator]
                                        / med("1MiB-c1", "direct", "p50_ms"))
    if "1MiB-c8" in results:
        out["latency_ratio_1mib_c8"] = (med("1MiB-c8", "lb", "p50_ms")  # type: ignore[operator]
                                        / med("1MiB-c8", "direct", "p50_ms"))
        out["throughput_ratio_1mib_c8"] = (med("1MiB-c8", "lb", "calls_per_s")  # type: ignore[operator]
                                           / med("1MiB-c8", "direct", "calls_per_s"))
    return out


def fmt_targets(r: dict[str, float], leak: dict[str, Any] | None) -> str:
    lines = ["target                          measured   goal      met"]
    for key, (label, op, goal) in TARGETS.items():
        if key not in r:
            continue
        v = r[key]
        ok = v <= goal if op == "<=" else v >= goal
        lines.append(f"{label:<31} {v:8.3f}   {op} {goal:<6}  {'yes' if ok else 'NO'}")
    if leak is not None:
        # Noise: allocator arenas settle in steps; 2 MiB over the second half
        # of the run is the resolution we claim.
        ok = leak["growth_second_half_kib"] <= 2048
        lines.append(f"{'RSS growth, 2nd half of run KiB':<31} {leak['growth_second_half_kib']:8d}"
                     f"   <= 2048    {'yes' if ok else 'NO'}"
                     f"   ({leak['calls']} calls, total {leak['growth_kib']} KiB)")
    for key in ("lb_cpu_ms_per_call_c1", "latency_ratio_1mib_c8", "throughput_ratio_1mib_c8"):
        if key in r:
            lines.append(f"(info) {key:<24} {r[key]:8.3f}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stubs", type=int, default=2, help="runner stub processes (default 2)")
    p.add_argument("--slots", type=int, default=640,
                   help="slots per stub; enough for the in-flight test (default 640)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=0.7, help="warm-up seconds per run")
    p.add_argument("--reps", type=int, default=3, help="runs per scenario and path (medians)")
    p.add_argument("--client-procs", type=int, default=2,
                   help="load generator processes for concurrency >= 8 (default 2)")
    p.add_argument("--scenarios", default=",".join(n for n in SCENARIOS if n != "echo15-c16"),
                   help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--idle-runners", type=int, default=1000,
                   help="memory: runners configured on an idle LB; 0 skips (default 1000)")
    p.add_argument("--inflight", type=int, default=1000,
                   help="memory: calls held in flight; 0 skips (default 1000)")
    p.add_argument("--leak-calls", type=int, default=20000,
                   help="memory: echo calls for the growth check; 0 skips (default 20000)")
    p.add_argument("--lb-arg", action="append", default=[],
                   help="extra argument for `fnlb serve` (repeatable)")
    p.add_argument("--lb-module", default="fnlb",
                   help="module that runs the LB (e.g. bench._uvloop to try uvloop)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=DIR[@MODULE]",
                   help="also run another LB, from the fnlb package in source tree DIR "
                        "(and/or started by MODULE, e.g. bench._uvloop), as path lb:NAME "
                        "in the same run: before/after comparisons (repeatable)")
    p.add_argument("--variant-arg", action="append", default=[], metavar="NAME=ARG",
                   help="an extra `fnlb serve` argument for variant NAME only, e.g. "
                        "--variant w2=. --variant-arg w2=--workers=2 (repeatable)")
    p.add_argument("--lb-connections", type=int, default=4,
                   help="connections from each load process to the LB, used round robin; "
                        "an LB with --workers N needs several (default 4)")
    p.add_argument("--fn-runners", type=int, default=2,
                   help="fn-protocol runners (tests/fn_double processes) behind a second LB, "
                        "path lb-fn (and lb-fn:NAME for every --variant); 0 skips (default 2)")
    p.add_argument("--paths", type=lambda v: [x for x in v.split(",") if x], default=[],
                   help="run only these paths, comma-separated (e.g. lb-fn,lb-fn:base); "
                        "default all")
    p.add_argument("--stub-src", default="",
                   help="run the runner stubs from the runner_stub package in this source tree")
    p.add_argument("--label", default="", help="free text stored in the JSON")
    p.add_argument("--hold", type=float, default=0.0,
                   help="after the scenarios, keep the cluster up this many seconds "
                        "and print the LB pid (for profiling)")
    p.add_argument("--profile", type=float, default=0.0,
                   help="after the scenarios, profile the LB with py-spy for this many seconds "
                        "under the echo c=32 load (needs py-spy on PATH or in the venv)")
    p.add_argument("--profile-scenario", default="echo15-c32", choices=list(SCENARIOS),
                   help="the load to profile under (default echo15-c32)")
    p.add_argument("--profile-path", default="lb",
                   help="the LB to profile: a path name, e.g. lb-fn (default lb)")
    p.add_argument("--profile-native", action="store_true",
                   help="py-spy --native: include C/Cython frames (gRPC core)")
    p.add_argument("--json", default="bench-results/datapath.json", help="output file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    for n in names:
        if n not in SCENARIOS:
            raise SystemExit(f"--scenarios: unknown scenario {n!r}; choose from {list(SCENARIOS)}")
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "label": args.label, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "machine": platform.machine(), "loadavg_at_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    with _cluster(args.lb_module) as cluster:
        stub_args = ["--slots", str(args.slots), "--memory-mb", str(args.slots * 128),
                     "--nack-after-ms", "100"]
        stubs = [cluster.stub(f"stub{i}", stub_args, args.stub_src) for i in range(args.stubs)]
        for stub in stubs:
            stub.wait_ready()
        fns = [cluster.fn_runner(f"fn{i}", args.slots) for i in range(args.fn_runners)]
        for fn in fns:
            fn.wait_ready()
        fn_addrs = [f"fn://{f.addr}" for f in fns]
        lb = cluster.lb("lb", [s.addr for s in stubs], args.lb_arg)
        lbs = {"lb": lb}
        for v in args.variant:
            vname, _, where = v.partition("=")
            src, _, module = where.partition("@")
            extra = [a.partition("=")[2] for a in args.variant_arg
                     if a.partition("=")[0] == vname]
            lbs[f"lb:{vname}"] = cluster.lb(f"lb-{vname}", [s.addr for s in stubs],
                                            [*args.lb_arg, *extra], src=src, module=module)
        if fns:
            lbs["lb-fn"] = cluster.lb("lb-fn", fn_addrs, args.lb_arg)
            for v in args.variant:
                vname, _, where = v.partition("=")
                src, _, module = where.partition("@")
                extra = [a.partition("=")[2] for a in args.variant_arg
                         if a.partition("=")[0] == vname]
                lbs[f"lb-fn:{vname}"] = cluster.lb(f"lb-fn-{vname}", fn_addrs,
                                                   [*args.lb_arg, *extra], src=src,
                                                   module=module)
        for p in lbs.values():
            p.wait_ready()
        report["lb_rss_start_kib"] = rss_kib(lb.pid)
        print(f"bench: {args.stubs} stubs + LB (pid {lb.pid}); {args.reps} x {args.duration:g}s "
              f"per path and scenario", flush=True)
        bench = Bench(args, cluster, stubs, lbs, fns)
        try:
            results = run_scenarios(bench, names, args.reps)
            report["scenarios"] = results
            if args.profile:
                report["profile"] = profile_lb(bench, args.profile, args.profile_native,
                                               Path(args.json).parent, args.profile_scenario,
                                               args.profile_path)
            if args.hold:
                print(f"holding {args.hold:g}s: LB pid {lb.pid} addr {lb.addr} "
                      f"stubs {[s.addr for s in stubs]}", flush=True)
                time.sleep(args.hold)
            memory: dict[str, Any] = {"lb_rss_start_kib": report["lb_rss_start_kib"]}
            if args.inflight:
                memory["inflight"] = memory_inflight(bench, args.inflight, 3000)
                print(f"  memory: {args.inflight} in flight: LB RSS "
                      f"{memory['inflight']['rss_inflight_kib'] / 1024:.1f} MiB", flush=True)
            if args.leak_calls:
                memory["leak"] = memory_leak(bench, args.leak_calls)
                print(f"  memory: {memory['leak']['calls']} calls: RSS "
                      f"{[round(s / 1024, 1) for s in memory['leak']['rss_samples_kib']]} MiB",
                      flush=True)
        finally:
            bench.close()
        if args.idle_runners:
            memory["idle_runners"] = memory_idle_runners(cluster, args.idle_runners, 3.0)
            print(f"  memory: {args.idle_runners} idle runners: LB RSS "
                  f"{memory['idle_runners']['rss_kib'] / 1024:.1f} MiB", flush=True)
        report["memory"] = memory
    # The targets compare lb with direct: only when both ran.
    r = (ratios(results) if all("lb" in ms and "direct" in ms for ms in results.values())
         else {})
    report["ratios"] = r
    report["elapsed_s"] = time.monotonic() - t_start
    print()
    print(fmt_table(results))
    print()
    print(fmt_targets(r, memory.get("leak")))
    report["fn_vs_fnlb"] = fn_vs_fnlb(results)
    if report["fn_vs_fnlb"]:
        print()
        print(fmt_fn_vs_fnlb(report["fn_vs_fnlb"]))
    if args.variant:
        report["paired"] = paired(results)
        print()
        print(fmt_paired(report["paired"]))
    print()
    print(fmt_memory(memory))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json} ({report['elapsed_s']:.0f} s)")
    return 0


def fmt_memory(m: dict[str, Any]) -> str:
    lines = [f"LB RSS at start (2 runners): {m['lb_rss_start_kib'] / 1024:.1f} MiB"]
    if "idle_runners" in m:
        i = m["idle_runners"]
        lines.append(f"LB RSS with {i['runners']} idle runners configured: "
                     f"{i['rss_kib'] / 1024:.1f} MiB (ready in {i['startup_s']:.1f} s, "
                     f"idle CPU {i['idle_cpu_pct']:.1f}% of a core, {i['threads']} threads, "
                     f"{i['fds']} fds)")
    if "inflight" in m:
        i = m["inflight"]
        lines.append(f"LB RSS with {int(i['peak_inflight'])} calls in flight: "
                     f"{i['rss_inflight_kib'] / 1024:.1f} MiB "
                     f"(before {i['rss_before_kib'] / 1024:.1f}, "
                     f"after {i['rss_after_kib'] / 1024:.1f}; {i['ok']} ok, {i['errors']} errors)")
    if "leak" in m:
        lk = m["leak"]
        lines.append(f"LB RSS over {lk['calls']} calls: "
                     f"{' -> '.join(f'{s / 1024:.1f}' for s in lk['rss_samples_kib'])} MiB "
                     f"({lk['bytes_per_call']:.1f} B/call overall)")
    return "\n".join(lines)


@contextlib.contextmanager
def _cluster(lb_module: str) -> Iterator[Cluster]:
    cluster = Cluster(lb_module=lb_module)
    prev = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield cluster
    finally:
        cluster.close()
        signal.signal(signal.SIGTERM, prev)


if __name__ == "__main__":
    sys.exit(main())
