"""The cost of mTLS: the same cluster plaintext vs mutual TLS everywhere, side by side.

    python -m bench.mtls [--seconds 4] [--rounds 3] [--concurrency 16]

Two runner stubs and one LB per mode (certificates minted by fnlb.tls); rounds
alternate plaintext / mTLS so machine noise hits both alike. Prints calls/s,
p50/p99 and the LB's CPU ms per call (from /proc), medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.datapath import cpu_seconds
from fnlb.harness import Proc, start
from fnlb.tls import init_ca, issue_cert
from fnlb.v1 import lb_pb2, lb_pb2_grpc


def _cluster(tls: Path | None) -> list[Proc]:
    def files(name: str) -> list[str]:
        assert tls is not None
        return ["--tls-cert", str(tls / f"{name}.crt"), "--tls-key", str(tls / f"{name}.key"),
                "--tls-ca", str(tls / "ca.crt")]

    procs = [start("runner_stub", ["--listen", "127.0.0.1:0", "--slots", "64",
                                   *(files("runner") if tls else [])])
             for _ in range(2)]
    lb_args = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--admin-listen", "",
               "--runners", ",".join(p.addr for p in procs)]
    if tls:
        lb_args += [*files("lb"), "--front-tls-cert", str(tls / "lb.crt"),
                    "--front-tls-key", str(tls / "lb.key"), "--front-tls-ca", str(tls / "ca.crt")]
    procs.append(start("fnlb", lb_args))
    return procs


async def _load(addr: str, tls: Path | None, concurrency: int, seconds: float) -> list[float]:
    if tls is None:
        ch = grpc.aio.insecure_channel(addr)
    else:
        ch = grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(
            (tls / "ca.crt").read_bytes(), (tls / "client.key").read_bytes(),
            (tls / "client.crt").read_bytes()))
    lat: list[float] = []
    async with ch:
        stub = lb_pb2_grpc.LoadBalancerStub(ch)
        req = lb_pb2.InvokeRequest(fn_id="echo", body=b"hello, fnlb mtls")
        for _ in range(50):  # warm-up: connections, handshakes, warm slots
            await stub.Invoke(req, timeout=10)
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await stub.Invoke(req, timeout=10)
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


def _round(procs: list[Proc], tls: Path | None, conc: int, seconds: float) -> dict[str, float]:
    lb = procs[-1]
    cpu0 = cpu_seconds(lb.popen.pid)
    t0 = time.monotonic()
    lat = asyncio.run(_load(lb.addr, tls, conc, seconds))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(lb.popen.pid) - cpu0
    lat.sort()
    return {"calls_s": len(lat) / seconds, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "lb_cpu_ms_call": cpu * 1000 / (len(lat) + 50), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        init_ca(d)
        for name, sans in (("runner", ["127.0.0.1"]), ("lb", ["127.0.0.1"]),
                           ("client", ["bench"])):
            issue_cert(d, name, sans, d)
        clusters = {"plaintext": _cluster(None), "mtls": _cluster(d)}
        try:
            rows: dict[str, list[dict[str, float]]] = {"plaintext": [], "mtls": []}
            for _ in range(args.rounds):
                for mode, procs in clusters.items():
                    rows[mode].append(_round(procs, d if mode == "mtls" else None,
                                             args.concurrency, args.seconds))
        finally:
            for procs in clusters.values():
                for p in procs:
                    p.stop()
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for mode, rs in rows.items()}
    print(f"echo through the LB, concurrency {args.concurrency}, "
          f"medians of {args.rounds} alternating rounds of {args.seconds:g} s")
    print(f"{'mode':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'LB CPU ms/call':>15}")
    for mode, m in med.items():
        print(f"{mode:<10} {m['calls_s']:9.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} "
              f"{m['lb_cpu_ms_call']:15.3f}")
    ratio = med["mtls"]["calls_s"] / med["plaintext"]["calls_s"]
    print(f"mTLS throughput = {ratio:.0%} of plaintext; "
          f"p50 x{med['mtls']['p50_ms'] / med['plaintext']['p50_ms']:.2f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "mtls.json").write_text(json.dumps({"medians": med, "rounds": rows}, indent=2))


if __name__ == "__main__":
    main()
