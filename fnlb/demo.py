"""``make demo``: an LB and three runner stubs as separate processes, real calls, a summary.

One of the runners is addressed as ``fn://``: the LB speaks fn's runner protocol to it.

    python -m fnlb.demo          # plaintext
    python -m fnlb.demo --tls    # the same cluster over mutual TLS everywhere

Everything it starts is stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from fnlb.harness import Proc, ProcGroup
from fnlb.v1 import lb_pb2, lb_pb2_grpc


def runner_tls(tls_dir: Path | None) -> list[str]:
    if tls_dir is None:
        return []
    return ["--tls-cert", str(tls_dir / "runner.crt"), "--tls-key", str(tls_dir / "runner.key"),
            "--tls-ca", str(tls_dir / "ca.crt"), "--close-allow", "lb"]  # the LB may drain


@contextlib.contextmanager
def cluster(tls_dir: Path | None) -> Iterator[tuple[Proc, list[Proc], ProcGroup]]:
    """The LB, its runners, and the group that stops them all (and any started later)."""
    with ProcGroup() as group:
        lb_tls: list[str] = []
        if tls_dir is not None:
            lb_tls = ["--tls-cert", str(tls_dir / "lb.crt"), "--tls-key", str(tls_dir / "lb.key"),
                      "--tls-ca", str(tls_dir / "ca.crt"),
                      "--front-tls-cert", str(tls_dir / "lb.crt"),
                      "--front-tls-key", str(tls_dir / "lb.key"),
                      "--front-tls-ca", str(tls_dir / "ca.crt"),
                      "--admin-allow", "demo-client"]  # the demo's certificate drives Admin
        # Heterogeneous runners: two with 2 slots, one with 1; cold starts cost 30 ms.
        # and each image's first call on a runner pulls it for 20 ms.
        runners = [group.spawn("runner_stub", [
            "--listen", "127.0.0.1:0", "--slots", str(slots),
            "--cold-start-ms", "30", "--image-pull-ms", "20", "--warm-cache", "2",
            "--nack-after-ms", "5",
            *runner_tls(tls_dir)], name=f"runner-{i}") for i, slots in enumerate((2, 2, 1))]
        for r in runners:
            r.wait_ready()
        # The last runner is addressed as fn://: the LB speaks fn's own runner
        # protocol to it (/RunnerProtocol/Engage), as it would to an fn pure runner.
        addrs = [r.addr for r in runners[:-1]] + [f"fn://{runners[-1].addr}"]
        lb = group.start("fnlb", ["serve", "--listen", "127.0.0.1:0",
                                  "--metrics-listen", "127.0.0.1:0",
                                  "--runners", ",".join(addrs),
                                  "--admin-listen", "127.0.0.1:0", "--placer", "ch",
                                  "--placer-timeout", "5s", *lb_tls], name="lb")
        yield lb, runners, group


def make_certs(out: Path) -> None:
    from fnlb.tls import init_ca, issue_cert

    init_ca(out)
    issue_cert(out, "runner", ["127.0.0.1", "localhost"], out)
    issue_cert(out, "lb", ["127.0.0.1", "localhost"], out)
    issue_cert(out, "client", ["demo-client"], out)


def channel(addr: str, tls_dir: Path | None) -> grpc.aio.Channel:
    if tls_dir is None:
        return grpc.aio.insecure_channel(addr)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / "client.key").read_bytes(),
        certificate_chain=(tls_dir / "client.crt").read_bytes())
    return grpc.aio.secure_channel(addr, creds)


async def traffic(lb: Proc, group: ProcGroup,
                  tls_dir: Path | None) -> list[tuple[str, str, float, str]]:
    """(phase, outcome, latency_s, runner) for every call."""
    results: list[tuple[str, str, float, str]] = []
    progress = asyncio.Event()  # set after every call

    async def until(cond: Callable[[], bool]) -> None:
        while not cond():
            progress.clear()
            await progress.wait()

    async with channel(lb.addr, tls_dir) as ch, channel(lb.fields["admin_addr"], tls_dir) as ach:
        admin = lb_pb2_grpc.AdminStub(ach)
        stub = lb_pb2_grpc.LoadBalancerStub(ch)

        async def one(phase: str, req: lb_pb2.InvokeRequest, timeout: float = 20) -> None:
            t0 = time.perf_counter()
            try:
                resp = await stub.Invoke(req, timeout=timeout)
                outcome, runner = f"HTTP {resp.status_code}", resp.runner
            except grpc.aio.AioRpcError as e:
                outcome, runner = e.code().name, "-"
            results.append((phase, outcome, time.perf_counter() - t0, runner))
            progress.set()

        print("1) echo: 20 calls to 4 functions, one at a time")
        for i in range(20):
            await one("echo", lb_pb2.InvokeRequest(fn_id=f"echo-{i % 4}", body=b"hello fnlb"))
        print("2) sleeps: 12 concurrent calls holding a slot for 100-300 ms")
        await asyncio.gather(*(one("sleep", lb_pb2.InvokeRequest(
            fn_id=f"sleepy-{i % 3}", config={"sleep_ms": str(100 + 100 * (i % 3))}))
            for i in range(12)))
        print("3) burst: 30 concurrent calls of one hot function on 5 slots -> they wait in "
              "the LB's queue for free slots (fn's LB would sweep NACKs)")
        await asyncio.gather(*(one("burst", lb_pb2.InvokeRequest(
            fn_id="hot", config={"sleep_ms": "50"})) for _ in range(30)))
        print("4) errors: a function returning 500, an empty fn_id, a 1 s deadline on a 3 s call")
        await one("errors", lb_pb2.InvokeRequest(fn_id="teapot", config={"status": "500"}))
        await one("errors", lb_pb2.InvokeRequest(fn_id=""))
        await one("errors", lb_pb2.InvokeRequest(fn_id="slow", config={"sleep_ms": "3000"}),
                  timeout=1)
        print("5) detached: returns once a runner accepted the call")
        await one("detached", lb_pb2.InvokeRequest(fn_id="bg", type=lb_pb2.DETACHED,
                                                   config={"sleep_ms": "500"}))

        print("6) one call traced: request metadata 'fnlb-trace: 1' -> where its time went, "
              "in the response trailers")
        call = stub.Invoke(lb_pb2.InvokeRequest(fn_id="traced", image="demo/traced:1",
                                                config={"sleep_ms": "40"}),
                           metadata=(("fnlb-trace", "1"),), timeout=20)
        resp = await call
        for key, value in await call.trailing_metadata() or ():
            if key.startswith("fnlb-"):
                print(f"   {key}: {value}")
        results.append(("traced", f"HTTP {resp.status_code}", 0.0, resp.runner))

        print("7) membership: 120 calls at concurrency 10; a 4th runner joins mid-load "
              "(Admin/AddRunner), then is drained and removed")
        newcomer = await asyncio.to_thread(  # stopped with the others
            group.start, "runner_stub", ["--listen", "127.0.0.1:0", "--slots", "2",
                                         *runner_tls(tls_dir)], name="runner-3")
        new_addr = newcomer.addr
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(120):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await one("churn", lb_pb2.InvokeRequest(
                    fn_id=f"churn-{i % 24}", config={"sleep_ms": "60"}))

        def on_newcomer() -> int:
            return sum(1 for r in results if r[0] == "churn" and r[3] == new_addr)

        workers = [asyncio.ensure_future(worker()) for _ in range(10)]
        await until(lambda: queue.qsize() <= 100)
        await admin.AddRunner(lb_pb2.AddRunnerRequest(address=new_addr), timeout=5)
        print(f"   + {new_addr} joined")
        # It ramps up (slow start); drain it once it has taken some calls.
        await until(lambda: queue.qsize() <= 20 or on_newcomer() >= 5)
        await admin.DrainRunner(lb_pb2.DrainRunnerRequest(address=new_addr), timeout=5)
        await admin.RemoveRunner(lb_pb2.RemoveRunnerRequest(address=new_addr), timeout=5)
        print(f"   - {new_addr} drained and removed")
        await asyncio.gather(*workers)
        churn = [r for r in results if r[0] == "churn"]
        ok = sum(1 for r in churn if r[1] == "HTTP 200")
        print(f"   {len(churn)} calls sent, {ok} completed, {len(churn) - ok} errors, "
              f"{sum(1 for r in churn if r[3] == new_addr)} ran on the newcomer")
        listing = await admin.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
        print("\n== the pool now (fnlb runners) ==")
        for r in listing.runners:
            print(f"  {r.address:<27} {r.state:<9} protocol={r.protocol:<5} "
                  f"source={r.source:<7} placed={r.placed}")
    return results


def summary(results: list[tuple[str, str, float, str]], lb: Proc) -> None:
    print("\n== calls per runner ==")
    for runner, n in sorted(collections.Counter(r[3] for r in results).items()):
        print(f"  {runner:<27} {n}")
    print("\n== outcomes ==")
    for (phase, outcome), n in sorted(collections.Counter((r[0], r[1]) for r in results).items()):
        print(f"  {phase:<9} {outcome:<20} {n}")
    lat = sorted(r[2] * 1000 for r in results if r[0] in ("echo",))
    burst = sorted(r[2] * 1000 for r in results if r[0] == "burst")
    q = statistics.quantiles
    print("\n== client-side latency (ms) ==")
    print(f"  echo   p50 {statistics.median(lat):7.2f}  p99 {q(lat, n=100)[98]:7.2f}")
    print(f"  burst  p50 {statistics.median(burst):7.2f}  p99 {q(burst, n=100)[98]:7.2f}")
    url = f"http://{lb.fields['metrics_addr']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    print(f"\n== a few metric lines from {url} ==")
    wanted = ("fnlb_calls_total", "fnlb_placer_retries_total", "fnlb_placer_placed_total",
              "fnlb_call_latency_seconds_count", "fnlb_placer_attempts_sum",
              "fnlb_placer_timeouts_total", "fnlb_queue_wait_seconds_count",
              "fnlb_queue_rejected_total", "fnlb_call_phase_seconds_sum",
              "fnlb_call_overhead_seconds_count")
    for line in text.splitlines():
        if line.startswith(wanted) and not line.endswith(" 0.0"):
            print("  " + line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls", action="store_true", help="mutual TLS on every connection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fnlb-demo-") as tmp:
        tls_dir = None
        if args.tls:
            tls_dir = Path(tmp)
            make_certs(tls_dir)
            print(f"minted a dev CA and certificates in {tls_dir} (fnlb certs init/issue)")
        try:
            with cluster(tls_dir) as (lb, runners, group):
                print(f"LB on {lb.addr} (metrics {lb.fields['metrics_addr']}, admin "
                      f"{lb.fields['admin_addr']}), runners "
                      f"{', '.join(r.addr for r in runners)}, "
                      f"{'mTLS' if tls_dir else 'plaintext'}\n")
                results = asyncio.run(traffic(lb, group, tls_dir))
                summary(results, lb)
        except KeyboardInterrupt:
            print("\ninterrupted: everything stopped", file=sys.stderr)
            return 130
    print("\nall processes stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
