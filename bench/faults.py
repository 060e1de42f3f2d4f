"""``make bench-faults``: the issue-13 targets, measured against real processes.

    python -m bench.faults [--only sigstop,partition,detached,dead] [--json FILE]

Four scenarios (``bench._chaos`` runs them; runner stubs log every call they
accept and start, so "failed but never accepted" and "run twice" are counted
from the runners' own view):

* SIGSTOP of 1 of 3 runners under 60 calls/s open loop (client deadline 5 s,
  10 s run, stopped from 2 s to 9 s): calls failed against calls in flight on
  it at the stop (the LB's Admin ListRunners), when the LB last placed a call
  on it while stopped, and the OK calls/s of the other two from 2 s after the
  stop (all of the offered rate once placement onto the stopped one stopped).
* Partition (iptables DROP both ways) of 1 of 3 runners, the one in a network
  namespace, for 10 s under 60 calls/s (client deadline 10 s): failed calls
  that no runner logged accepting, when placement onto it stopped, and the
  LB's first placement on it after healing. Needs root, ip and iptables
  (skipped with the reason otherwise).
* SIGTERM of the LB (``--drain-grace 10s``) 0.3 s after 20 detached calls of
  3 s each were acknowledged: how many ran to completion on the runners.
* 500 dead runners (reserved ports: connections refused) + 2 live: p50 of
  sequential calls against the same 2 live runners alone.

Prints the targets table (measured, met or NO) and writes ``--json``. Bounded:
every scenario has fixed durations (about 2 minutes in all); processes and
namespaces are always cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import _chaos as chaos
from fnlb import _netns

__all__ = ["main"]

SCENARIOS = ("sigstop", "partition", "detached", "dead")


def _sigstop() -> chaos.StopResult:
    with chaos.cluster(3) as c:
        return asyncio.run(chaos.sigstop(c, rate=60, before=2, stopped=7, after=1, deadline=5,
                                         sleep_ms=100))


def _partition() -> chaos.PartitionResult:
    with _netns.netns() as ns, chaos.cluster(2, in_netns=ns) as c:
        return asyncio.run(chaos.partition(c, rate=60, before=2, cut=10, after=15, deadline=10,
                                           sleep_ms=100))


def _detached() -> chaos.DetachedResult:
    with chaos.cluster(3, stub_args=["--slots", "8"]) as c:
        return asyncio.run(chaos.detached_sigterm(c, calls=20, sleep_ms=3000, delay=0.3))


def _dead() -> chaos.DeadRunnersResult:
    return chaos.dead_runners(dead=500, calls=300, settle=8)


def _secs(v: float | None, never: str) -> str:
    return never if v is None else f"{v:.1f} s"


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met None = not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    s = r.get("sigstop")
    if isinstance(s, chaos.StopResult):
        rows += [
            ("SIGSTOP 1 of 3 @60/s: calls failed <= calls in flight on it at the stop",
             f"{s.failed} failed, {s.inflight_at_stop} in flight", s.failed <= s.inflight_at_stop),
            ("  placement onto it stops within 2 s",
             _secs(s.stop_placing_s, f"never (placing until SIGCONT, {s.stopped_s:.0f} s)"),
             s.stop_placing_s is not None and s.stop_placing_s <= 2),
            ("  throughput of the other two unaffected (OK/s from stop+2 s)",
             f"{s.others_rate:.1f}/s of {s.rate:.0f}/s offered", s.others_rate >= 0.95 * s.rate),
        ]
    elif "sigstop" in r:
        rows.append(("SIGSTOP 1 of 3 @60/s", str(r["sigstop"]), None))
    p = r.get("partition")
    if isinstance(p, chaos.PartitionResult):
        rows += [
            ("Partition (DROP) 1 of 3: never-accepted calls failed = 0",
             f"{p.never_accepted_failed} (of {p.failed} failed)", p.never_accepted_failed == 0),
            ("  placement onto it stops within 2 s (chaos-suite target)",
             _secs(p.stop_placing_s, f"never (placing until healed, {p.cut_s:.0f} s)"),
             p.stop_placing_s is not None and p.stop_placing_s <= 2),
            ("  recovery after healing <= 3 s (first placement on it)",
             _secs(p.recovery_s, "none within the run"),
             p.recovery_s is not None and p.recovery_s <= 3),
        ]
    elif "partition" in r:
        rows.append(("Partition (DROP) 1 of 3", str(r["partition"]), None))
    d = r.get("detached")
    if isinstance(d, chaos.DetachedResult):
        rows.append(("SIGTERM with 20 detached calls running: 20 complete",
                     f"{d.completed}/{d.calls} complete, {d.canceled} canceled",
                     d.completed == d.calls))
    elif "detached" in r:
        rows.append(("SIGTERM with 20 detached calls running", str(r["detached"]), None))
    x = r.get("dead")
    if isinstance(x, chaos.DeadRunnersResult):
        rows.append(("500 dead + 2 live runners: p50 <= 1.5x the 2-live-only p50",
                     f"{x.with_dead_p50_ms:.1f} ms vs {x.live_p50_ms:.1f} ms ({x.ratio:.1f}x)",
                     x.ratio <= 1.5))
    elif "dead" in r:
        rows.append(("500 dead + 2 live runners", str(r["dead"]), None))
    return rows


def format_table(rows: Sequence[tuple[str, str, bool | None]]) -> str:
    w0 = max(len(t) for t, _, _ in rows)
    w1 = max(len(m) for _, m, _ in rows)
    lines = [f"{'target':<{w0}}  {'measured':<{w1}}  met", f"{'-' * w0}  {'-' * w1}  ---"]
    for target, measured, met in rows:
        flag = "-" if met is None else ("met" if met else "NO")
        lines.append(f"{target:<{w0}}  {measured:<{w1}}  {flag}")
    return "\n".join(lines)


def _jsonable(result: object) -> object:
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return result
    out = dataclasses.asdict(result)
    records = out.pop("records", None)
    if records is not None:  # the failed calls only: all of them would be thousands of rows
        out["failed_calls"] = [{k: rec[k] for k in ("call_id", "code", "details", "runner")}
                               | {"sent_s": round(rec["sent"] - records[0]["sent"], 3)}
                               for rec in records if rec["code"] != "OK"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios to run ({', '.join(SCENARIOS)})")
    ap.add_argument("--json", default="bench-results/faults.json", help="output file")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        ap.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    runs = {"sigstop": _sigstop, "partition": _partition, "detached": _detached, "dead": _dead}
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in chosen:
        if name == "partition" and (reason := _netns.unavailable()):
            results[name] = f"skipped: {reason}"
            continue
        print(f"running {name} ...", flush=True)
        t0 = time.monotonic()
        results[name] = runs[name]()
        seconds[name] = round(time.monotonic() - t0, 1)
    rows = targets(results)
    print()
    print(format_table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "targets": [{"target": t.strip(), "measured": m, "met": met} for t, m, met in rows],
        "results": {k: _jsonable(v) for k, v in results.items()},
        "seconds": seconds,
    }, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
