"""``make bench-scale``: one LB over 100 / 1,000 / 5,000 runners (issue 17's targets).

    python -m bench.scale [--sizes 100,1000,5000] [--quick] [--mode polls|watch|both]
                          [--poll-rate N] [--json FILE]

Runners are fake runners from runner hosts (``runner-stub --listen
HOST:FIRST-LAST``: one process, one runner per port), listed in the LB's
``--runners-file``. Per pool size it measures, against real processes:

* **healthy after**: from spawning the LB until ``fnlb_pool_runners{state=
  "healthy"}`` counts every runner;
* **idle CPU**: the LB's utime+stime over a quiet window, % of one core;
* **KiB/runner**: the LB's RSS above an LB with an empty pool, per runner;
* **kill noticed**: SIGKILL of a host holding a tenth of the runners (at most
  250) until none of them counts as healthy, in seconds and in polls of one
  runner (``--health-poll-rate`` spreads polls: a runner is polled every
  ``max(--health-interval, runners / rate)``);
* **placement**: an in-process microbenchmark of ``chbl`` and ``p2c`` choosing
  a runner over a pool of that size (µs per decision, no network);
* **churn** (the middle size): runners leave and join the file at 20/s for
  ``--churn-s`` seconds; the LB's per-runner tables must be back to the pool
  size after, and RSS must not grow beyond noise.

``--mode watch`` runs the same with runners that advertise "watch" (their
status pushed instead of polled) and the LB's ``--runner-idle-close 0``
(``--watch-idle-close``): an idle-closed channel ends its runner's watch and
the runner is polled, so with idle channels closed the watch row would
measure polls. The row says how many runners the LB logged as watched.
Every loop is bounded in count and time; every process is stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.burst import scrape
from bench.datapath import cpu_seconds, rss_kib
from fnlb.harness import Proc, ProcGroup

__all__ = ["main", "start_host", "Measured", "MODES"]

MODES = ("polls", "watch")
PER_HOST = 2500  # runners per host process (one listening socket + one connection each)
_PORT_LOW, _PORT_HIGH = 20000, 32000  # below Linux's ephemeral range (32768-60999)
_HEALTHY = "fnlb_pool_runners{state=healthy}"

# Targets, issue 17.
IDLE_CPU_TARGET = {1000: 3.0, 5000: 10.0}  # % of a core
KIB_PER_RUNNER_TARGET = 40.0
HEALTHY_TARGET_S = 10.0  # all of 5,000
KILL_TARGET_POLLS = 2.0  # no watch; watch: 1 s
KILL_TARGET_WATCH_S = 1.0
PLACE_TARGET_US = 20.0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Host:
    proc: Proc
    addrs: list[str]


def start_host(group: ProcGroup, n: int, args: Sequence[str] = (), *,
               rng: random.Random | None = None, tries: int = 8) -> Host:
    """A runner host with ``n`` runners on a free port range (another range if one is taken)."""
    rng = rng or random.Random()
    last: Exception | None = None
    for _ in range(tries):
        first = rng.randrange(_PORT_LOW, _PORT_HIGH - n)
        proc = group.spawn("runner_stub", ["--listen", f"127.0.0.1:{first}-{first + n - 1}",
                                           "--log-level", "warning", *args],
                           name=f"host{first}")
        try:
            # warning level: the host's listening line is info; wait for the ports instead.
            _wait_bound(proc, first, n)
        except RuntimeError as e:
            last = e
            group.stop(proc)
            continue
        return Host(proc, [f"127.0.0.1:{p}" for p in range(first, first + n)])
    raise RuntimeError(f"no free range of {n} ports after {tries} tries: {last}")


def _wait_bound(proc: Proc, first: int, n: int, within: float = 60.0) -> None:
    """Until the host listens on its last port (ports are bound in order), or it exited."""
    import socket

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"host exited: {proc.output()[-300:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", first + n - 1)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"host did not listen on {first + n - 1} within {within}s")


def start_lb(group: ProcGroup, runners_file: Path, args: Sequence[str] = ()) -> Proc:
    return group.start("fnlb", [
        "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--runners-file", str(runners_file),
        "--runners-file-interval", "200ms", "--log-level", "info", *args],
        ready=r"msg=listening", name="lb", timeout=60)


def healthy(lb: Proc) -> float:
    return scrape(lb.fields["metrics_addr"]).get(_HEALTHY, 0.0)


def healthy_among(lb: Proc, addrs: Sequence[str]) -> int:
    """How many of ``addrs`` the LB's Admin ListRunners shows as healthy."""
    import grpc

    from fnlb.v1 import lb_pb2, lb_pb2_grpc

    wanted = set(addrs)
    with grpc.insecure_channel(lb.fields["admin_addr"]) as ch:
        resp = lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=10)
    return sum(1 for r in resp.runners if r.address in wanted and r.state == "healthy")


def watched(lb: Proc) -> int:
    """Runners the LB watches now: logged "watching runner" and no stream end since."""
    import re

    rx = re.compile(r'msg="(watching runner|watch stream ended)[^"]*".* runner=(\S+)')
    now: set[str] = set()
    for line in lb.read_lines():
        if (hit := rx.search(line)) is not None:
            (now.add if hit.group(1) == "watching runner" else now.discard)(hit.group(2))
    return len(now)


def wait_metric(lb: Proc, pred: Any, within: float, step: float = 0.05) -> float | None:
    """Seconds until ``pred(healthy runners)`` held, or None after ``within``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if pred(healthy(lb)):
            return time.monotonic() - t0
        time.sleep(step)
    return None


def idle_cpu(pid: int, seconds: float) -> float:
    """% of one core the process used over ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def write_runners(path: Path, addrs: Sequence[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(a + "\n" for a in addrs))
    os.replace(tmp, path)  # the LB never reads half a file


@dataclass
class Measured:
    mode: str
    runners: int
    healthy_s: float | None = None
    idle_cpu_pct: float | None = None
    rss_mib: float | None = None
    kib_per_runner: float | None = None
    kill_runners: int = 0
    kill_s: float | None = None
    poll_period_s: float | None = None
    watched: int | None = None  # runners the LB logged "watching runner" for (watch mode)
    place_us: dict[str, float] = field(default_factory=dict)
    churn: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def poll_period(n: int, rate: float | None, interval: float = 2.0) -> float:
    """Seconds between two polls of one runner under a poll budget (fnlb.pools.prober)."""
    if not rate:
        return interval
    return max(interval, n / rate)


def baseline_rss(workdir: Path, lb_args: Sequence[str], settle: float) -> float:
    """RSS (KiB) of an LB with an empty pool, once it settled."""
    empty = workdir / "empty.txt"
    write_runners(empty, [])
    with ProcGroup(drain=False) as group:
        lb = start_lb(group, empty, lb_args)
        time.sleep(settle)
        return float(rss_kib(lb.pid))


def run_size(n: int, mode: str, workdir: Path, lb_args: Sequence[str], base_kib: float,
             args: argparse.Namespace) -> Measured:
    m = Measured(mode, n)
    m.poll_period_s = poll_period(n, args.poll_rate)
    victims = max(1, min(250, n // 10))
    host_args = ["--watch", "true" if mode == "watch" else "false"]
    runners_file = workdir / f"runners-{n}.txt"
    with ProcGroup(drain=False) as group:
        hosts: list[Host] = []
        left = n - victims
        while left > 0:
            k = min(PER_HOST, left)
            hosts.append(start_host(group, k, host_args))
            left -= k
        victim = start_host(group, victims, host_args)
        addrs = [a for h in hosts for a in h.addrs] + victim.addrs
        write_runners(runners_file, addrs)
        t0 = time.monotonic()
        lb = start_lb(group, runners_file, lb_args)
        got = wait_metric(lb, lambda h: h >= n, args.healthy_within)
        m.healthy_s = None if got is None else time.monotonic() - t0
        if got is None:
            seen = healthy(lb)
            m.note = f"only {seen:.0f} of {n} healthy after {args.healthy_within:g}s"
            if seen < 0.9 * n:
                return m  # too few to measure the rest on
        time.sleep(args.settle + (args.idle_close * 1.25 + 1 if args.idle_close else 0))
        m.idle_cpu_pct = idle_cpu(lb.pid, args.idle_s)
        if mode == "watch":
            m.watched = watched(lb)
            if m.watched < n:
                m.note = "; ".join(filter(None, (m.note, f"only {m.watched} of {n} watched")))
        rss = float(rss_kib(lb.pid))
        m.rss_mib = rss / 1024
        m.kib_per_runner = (rss - base_kib) / n
        victim.proc.signal(signal.SIGKILL)
        t_kill = time.monotonic()
        limit = min(args.kill_within, 2 * m.poll_period_s + 10)
        m.kill_runners = victims
        left = victims
        while time.monotonic() - t_kill < limit:
            left = healthy_among(lb, victim.addrs)
            if left == 0:
                m.kill_s = time.monotonic() - t_kill
                break
            time.sleep(0.2)
        else:
            m.note = "; ".join(filter(None, (m.note, (
                f"kill: {victims - left} of {victims} noticed within the bench's "
                f"{limit:.0f}s; 2 polls = {2 * m.poll_period_s:.0f}s"))))
        if n == args.churn_size:
            m.churn = churn(lb, runners_file, [a for h in hosts for a in h.addrs], args)
    return m


def _tables(lb: Proc) -> dict[str, float]:
    """The LB's per-runner table sizes (``fnlb_pool_table_entries{table}``) and RSS."""
    metrics = scrape(lb.fields["metrics_addr"])
    out = {k.split("table=", 1)[1].rstrip("}"): v for k, v in metrics.items()
           if k.startswith("fnlb_pool_table_entries{")}
    out["rss_kib"] = float(rss_kib(lb.pid))
    return out


def churn(lb: Proc, runners_file: Path, live: list[str], args: argparse.Namespace
          ) -> dict[str, Any]:
    """Runners leave and join at ``args.churn_rate``/s for ``args.churn_s``; tables after.

    The pool keeps its size on average: each step drops one listed runner and
    adds one spare (a live runner not listed), then the original list is
    restored and the LB given time to settle.
    """
    rng = random.Random(17)
    spare_n = max(1, len(live) // 5)
    listed, spare = list(live[spare_n:]), list(live[:spare_n])
    n = len(listed)
    write_runners(runners_file, listed)
    wait_metric(lb, lambda h: h <= n, 30)
    time.sleep(args.settle)
    before = _tables(lb)
    steps = int(args.churn_s * args.churn_rate)
    t0 = time.monotonic()
    for i in range(steps):
        out_i, in_i = rng.randrange(len(listed)), rng.randrange(len(spare))
        listed[out_i], spare[in_i] = spare[in_i], listed[out_i]
        write_runners(runners_file, listed)
        pause = t0 + (i + 1) / args.churn_rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    during = _tables(lb)
    listed = list(live[spare_n:])
    write_runners(runners_file, listed)
    wait_metric(lb, lambda h: h >= n, 60)
    time.sleep(args.settle + 2)
    after = _tables(lb)
    # Membership back to its size, nothing left retiring or in flight; load
    # reports come and go with polls (stale ones are pruned) but never exceed it.
    back = (after.get("members") == before.get("members") == n
            and after.get("retiring") == 0 and after.get("inflight") == 0
            and after.get("reports", 0) <= n)
    growth = (after["rss_kib"] - before["rss_kib"]) / 1024
    return {"seconds": args.churn_s, "rate": args.churn_rate, "runners": n,
            "before": before, "during": during, "after": after,
            "tables_back": back, "rss_growth_mib": growth}


def placement_us(n: int, placer: str) -> float:
    """µs per decision of ``placer`` over ``n`` runners (``bench.sim.decision_cost``:
    the production placer's order, in process, loads and reports in place)."""
    from bench.sim import decision_cost

    return decision_cost(placer, n)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def report(rows: Sequence[Measured]) -> str:
    head = (f"{'mode':<6} {'runners':>7} | {'healthy s':>9} {'(<=10)':>6} | {'idle CPU %':>10} "
            f"{'target':>6} | {'KiB/runner':>10} {'(<=40)':>6} | {'kill s':>7} {'polls':>5} "
            f"{'(<=2)':>5} | {'chbl us':>7} {'p2c us':>7} {'(<=20)':>6}")
    lines = [head, "-" * len(head)]
    for m in rows:
        if m.note.startswith("n/a"):
            lines.append(f"{m.mode:<6} {m.runners:>7} | {m.note}")
            continue
        cpu_target = IDLE_CPU_TARGET.get(m.runners)
        healthy_ok = None if m.healthy_s is None or m.runners != 5000 else (
            m.healthy_s <= HEALTHY_TARGET_S)
        cpu_ok = None if cpu_target is None or m.idle_cpu_pct is None else (
            m.idle_cpu_pct <= cpu_target)
        # Below 1,000 runners the per-runner share drowns in the LB's own RSS noise.
        kib_ok = None if m.kib_per_runner is None or m.runners < 1000 else (
            m.kib_per_runner <= KIB_PER_RUNNER_TARGET)
        polls = None if m.kill_s is None or not m.poll_period_s else m.kill_s / m.poll_period_s
        if m.mode == "watch":
            kill_ok = None if m.kill_s is None else m.kill_s <= KILL_TARGET_WATCH_S
        else:
            kill_ok = None if polls is None else polls <= KILL_TARGET_POLLS
        place = [m.place_us.get(p) for p in ("chbl", "p2c")]
        place_ok = None if None in place or m.runners != 5000 else (
            max(p or 0 for p in place) <= PLACE_TARGET_US)
        lines.append(
            f"{m.mode:<6} {m.runners:>7} | {_fmt(m.healthy_s):>9} {verdict(healthy_ok):>6} | "
            f"{_fmt(m.idle_cpu_pct):>10} {verdict(cpu_ok) if cpu_target else '-':>6} | "
            f"{_fmt(m.kib_per_runner):>10} {verdict(kib_ok):>6} | {_fmt(m.kill_s):>7} "
            f"{_fmt(polls):>5} {verdict(kill_ok):>5} | {_fmt(place[0]):>7} {_fmt(place[1]):>7} "
            f"{verdict(place_ok):>6}" + (f"  ({m.note})" if m.note else "")
            + (f"  [{m.watched} watched]" if m.watched is not None else ""))
    for m in rows:
        if m.churn:
            c = m.churn
            lines.append(
                f"churn ({m.mode}, {c['runners']} runners, {c['rate']:g}/s for "
                f"{c['seconds']:g}s): tables before {_tables_text(c['before'])}, after "
                f"{_tables_text(c['after'])} -> {verdict(c['tables_back'])}; RSS growth "
                f"{c['rss_growth_mib']:.1f} MiB")
    return "\n".join(lines)


def _tables_text(t: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(t.items()) if k != "rss_kib") or "none"


def _watch_supported() -> bool:
    """Runner hosts can advertise "watch" (issue 17's Runner/Watch is merged)."""
    from runner_stub.cli import build_parser

    return any("--watch" in a.option_strings for a in build_parser()._actions)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--mode", choices=(*MODES, "both"), default="both")
    p.add_argument("--poll-rate", type=float, default=None,
                   help="the LB's --health-poll-rate (default: the LB's default)")
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--idle-close", type=float, default=10.0,
                   help="the LB's --runner-idle-close (s); idle CPU and RSS are measured "
                        "once it passed, with the channels of idle runners closed "
                        "(0: channels stay open)")
    p.add_argument("--watch-idle-close", type=float, default=0.0,
                   help="the LB's --runner-idle-close (s) in watch mode (0: channels, and "
                        "with them the watches, stay open)")
    p.add_argument("--healthy-within", type=float, default=150.0)
    p.add_argument("--kill-within", type=float, default=120.0)
    p.add_argument("--churn-s", type=float, default=60.0)
    p.add_argument("--churn-rate", type=float, default=20.0)
    p.add_argument("--churn-size", type=int, default=1000)
    p.add_argument("--lb-arg", action="append", default=[],
                   help="extra fnlb serve argument (repeatable), e.g. --lb-arg=--placer=p2c")
    p.add_argument("--quick", action="store_true",
                   help="sizes 100,1000; 5 s idle window; 10 s churn")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.idle_s, args.churn_s = "100,1000", 5.0, 10.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_nofile()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = MODES if args.mode == "both" else (args.mode,)
    lb_args = list(args.lb_arg)
    if args.poll_rate is not None:
        lb_args += ["--health-poll-rate", f"{args.poll_rate:g}"]
    elif "--health-poll-rate" not in " ".join(lb_args):
        args.poll_rate = _default_poll_rate()
    idle_close = {"polls": args.idle_close, "watch": args.watch_idle_close}
    rows: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        base = baseline_rss(workdir, lb_args, args.settle)  # (an empty pool closes nothing)
        print(f"empty-pool LB RSS: {base / 1024:.1f} MiB", flush=True)
        for mode in modes:
            for n in sizes:
                if mode == "watch" and not _watch_supported():
                    rows.append(Measured(mode, n, note="n/a: runner hosts do not advertise "
                                                       "'watch' yet"))
                    continue
                print(f"-- {mode}, {n} runners", flush=True)
                close = idle_close[mode]
                mode_args = [*lb_args, "--runner-idle-close", f"{close:g}s"]
                m = run_size(n, mode, workdir, mode_args, base,
                             argparse.Namespace(**{**vars(args), "idle_close": close}))
                m.place_us = {p: placement_us(n, p) for p in ("chbl", "p2c")}
                rows.append(m)
                print("\n".join(report([m]).splitlines()[2:]), flush=True)
    print()
    print(report(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def _default_poll_rate() -> float | None:
    try:
        from fnlb.pools.health import HealthConfig
    except ImportError:  # pragma: no cover
        return None
    rate = getattr(HealthConfig(), "poll_rate", None)
    return None if rate is None or math.isinf(rate) else float(rate)


if __name__ == "__main__":
    raise SystemExit(main())
