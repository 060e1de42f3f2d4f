"""A burst of concurrent calls: is every call served, queued or shed, and counted?

    python -m bench.burst --calls 5000 [--channels 1] [--sleep-ms 1000]
                          [--placer-timeout 30s] [--lb-arg=--retry-all-delay=1s]

Starts 2 ``runner-stub --slots 4`` and one LB (``fnlb serve``), sends ``--calls``
concurrent ``Invoke`` calls at once from this process over ``--channels``
channels (one HTTP/2 connection each), and prints how the calls ended, by gRPC
status code, next to what the LB counted (``fnlb_calls_total`` and
``fnlb_calls_completed_total``). Calls the LB never counted ("never seen")
ended before its handler ran. Every second it samples ``fnlb_calls_total`` so
the table shows how fast the LB took the calls in.

What it showed (grpcio 1.85): gRPC core keeps the calls that arrived before the
aio server asked for them and drops them with a bare CANCELLED, the LB never
seeing them, (1) at random from 1,000 waiting and all from 3,000
(``grpc.server.max_pending_requests`` / ``..._hard_limit``; fnlb.server raises
both), and (2) once one waited 30 s (``grpc.server_max_unrequested_time_in_server``),
which happens when the LB's loop takes calls in too slowly (e.g. busy with NACK
sweeps under 10,000 waiting calls).

Bounded: the whole run stops after ``--max-seconds`` (calls still open are
cancelled by this client and reported as ``unfinished``); processes always stop.
``--lb-env GRPC_TRACE=http`` passes an environment variable to the LB only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import urllib.request
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.datapath import cpu_seconds, rss_kib
from fnlb.harness import Proc, running, running_stubs
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["main", "scrape"]


def scrape(metrics_addr: str) -> dict[str, float]:
    """The LB's counters as {"name{label=value,...}": value}."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _rss_mib(pid: int, field: str) -> float:
    return rss_kib(pid, field) / 1024


def _sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


async def _burst(addr: str, metrics_addr: str, args: argparse.Namespace,
                 ) -> tuple[list[tuple[str, str, float]], list[tuple[float, float]]]:
    channels = [grpc.aio.insecure_channel(addr) for _ in range(args.channels)]
    try:
        stubs = [lb_pb2_grpc.LoadBalancerStub(ch) for ch in channels]
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 10)
        req = lb_pb2.InvokeRequest(fn_id="burst", app_id="burst",
                                   config={"sleep_ms": str(args.sleep_ms)})
        results: list[tuple[str, str, float]] = []
        t0 = time.monotonic()

        async def one(i: int) -> None:
            try:
                await stubs[i % len(stubs)].Invoke(req, timeout=args.timeout)
                results.append(("OK", "", time.monotonic() - t0))
            except grpc.aio.AioRpcError as e:
                results.append((e.code().name, e.details() or "", time.monotonic() - t0))
            except asyncio.CancelledError:
                results.append(("unfinished", "cancelled by bench.burst at --max-seconds",
                                time.monotonic() - t0))
                raise

        tasks = [asyncio.ensure_future(one(i)) for i in range(args.calls)]
        seen: list[tuple[float, float]] = []

        async def sample() -> None:
            while True:
                m = await asyncio.to_thread(scrape, metrics_addr)
                seen.append((time.monotonic() - t0, _sum(m, "fnlb_calls_total")))
                await asyncio.sleep(1.0)

        sampler = asyncio.ensure_future(sample())
        _, pending = await asyncio.wait(tasks, timeout=args.max_seconds)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        return results, seen
    finally:
        for ch in channels:
            await ch.close()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    stub_args = ["--slots", str(args.slots), *args.stub_arg]
    with running_stubs(args.runners, stub_args) as stubs:
        lb_args = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                   "--admin-listen", "", "--runners", ",".join(s.addr for s in stubs),
                   "--placer-timeout", args.placer_timeout, *args.lb_arg]
        env = dict(kv.split("=", 1) for kv in args.lb_env)
        with running("fnlb", lb_args, env=env) as lb:
            return _measure(lb, args)


def _measure(lb: Proc, args: argparse.Namespace) -> dict[str, Any]:
    metrics_addr = lb.fields["metrics_addr"]
    before = scrape(metrics_addr)
    rss0 = _rss_mib(lb.popen.pid, "VmRSS")
    cpu0, wall0 = cpu_seconds(lb.popen.pid), time.monotonic()
    results, seen = asyncio.run(_burst(lb.addr, metrics_addr, args))
    wall = time.monotonic() - wall0
    lb_cpu = cpu_seconds(lb.popen.pid) - cpu0
    # The LB ends its handlers a moment after the client sees the status.
    after = scrape(metrics_addr)
    deadline = time.monotonic() + 5
    while (_sum(after, "fnlb_calls_inflight") > 0 and time.monotonic() < deadline):
        time.sleep(0.2)
        after = scrape(metrics_addr)
    counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
               if k.startswith(("fnlb_calls_total", "fnlb_calls_completed_total",
                                "fnlb_placer_timeouts_total",
                                "fnlb_placer_client_cancels_total",
                                "fnlb_placer_client_timeouts_total",
                                "fnlb_placer_retries_total"))}
    if args.lb_log:
        with open(args.lb_log, "w") as f:
            f.write("\n".join(lb.lines) + "\n")
    lb_lines = lb.output().splitlines()
    return {"results": results, "seen": seen, "counted": counted, "wall_s": wall,
            "lb_cpu_pct": 100 * lb_cpu / wall if wall else 0.0,
            "lb_rss_mib": (rss0, _rss_mib(lb.popen.pid, "VmHWM")),
            "lb_tail": [ln for ln in lb_lines if ("level=warning" in ln or "level=error" in ln)
                        and "msg=\"call failed\"" not in ln][-5:]}


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    results: list[tuple[str, str, float]] = r["results"]
    by_code: dict[str, list[float]] = collections.defaultdict(list)
    details: collections.Counter[tuple[str, str]] = collections.Counter()
    for code, detail, t in results:
        by_code[code].append(t)
        details[(code, detail[:90])] += 1
    counted: dict[str, float] = r["counted"]
    lb_calls = _sum(counted, "fnlb_calls_total")
    print(f"burst: {args.calls} concurrent Invoke calls over {args.channels} channel(s), "
          f"sleep_ms={args.sleep_ms}, {args.runners} runners x {args.slots} slots, "
          f"--placer-timeout {args.placer_timeout} {' '.join(args.lb_arg)}")
    print(f"{'client status':<20} {'calls':>6} {'first s':>8} {'last s':>8}")
    for code, ts in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
        print(f"{code:<20} {len(ts):6d} {min(ts):8.1f} {max(ts):8.1f}")
    for (code, detail), n in details.most_common(6):
        print(f"  {n:6d} x {code}: {detail!r}")
    print(f"LB counted fnlb_calls_total={lb_calls:.0f} of {args.calls} sent; "
          f"never seen by the LB: {args.calls - lb_calls:.0f}")
    for k, v in sorted(counted.items()):
        if v and k.startswith(("fnlb_calls_completed_total", "fnlb_placer_retries_total")):
            print(f"  {k} = {v:.0f}")
    taken = ", ".join(f"{t:.0f}s:{n:.0f}" for t, n in r["seen"][::max(1, len(r["seen"]) // 12)])
    print(f"LB calls_total over time (s:count): {taken}")
    print(f"wall {r['wall_s']:.1f} s, LB CPU {r['lb_cpu_pct']:.0f} % of a core, "
          "LB RSS {:.0f} MiB before, peak {:.0f} MiB".format(*r["lb_rss_mib"]))
    for ln in r["lb_tail"]:
        print(f"  LB: {ln[:200]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "by_code": {k: len(v) for k, v in by_code.items()},
                       "counted": counted, "seen": r["seen"], "wall_s": r["wall_s"],
                       "lb_cpu_pct": r["lb_cpu_pct"], "lb_rss_mib": r["lb_rss_mib"]},
                      f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--channels", type=int, default=1,
                    help="client channels (HTTP/2 connections), calls spread round robin")
    ap.add_argument("--runners", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--sleep-ms", type=int, default=1000)
    ap.add_argument("--placer-timeout", default="30s")
    ap.add_argument("--timeout", type=float, default=None,
                    help="client deadline per call in seconds (default: none)")
    ap.add_argument("--max-seconds", type=float, default=90.0,
                    help="stop the run after this long; open calls count as unfinished")
    ap.add_argument("--lb-arg", action="append", default=[],
                    help="extra fnlb serve argument, e.g. --lb-arg=--retry-all-delay=1s")
    ap.add_argument("--stub-arg", action="append", default=[],
                    help="extra runner-stub argument, e.g. --stub-arg=--nack-after-ms=60000 "
                         "(calls wait at the runner for a slot: the LB stays idle)")
    ap.add_argument("--lb-env", action="append", default=[],
                    help="NAME=VALUE in the LB's environment only (e.g. GRPC_TRACE=http)")
    ap.add_argument("--lb-log", default="", help="write the LB's whole output to this file")
    ap.add_argument("--json", default="", help="also write the counts to this file")
    args = ap.parse_args()
    if not 0 < args.calls <= 20000:
        ap.error("--calls: 1..20000")
    _report(args, _run(args))


if __name__ == "__main__":
    main()
