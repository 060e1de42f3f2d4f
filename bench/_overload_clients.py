"""The clients of ``bench.overload``: they run in a process of their own.

The benchmark reads the LB's CPU time from /proc, so the load must not come
from the same process (nor share its event loop). Two entry points, both
picklable for a spawn-context process pool:

* ``closed_loop(ClosedLoop)`` — groups of closed-loop clients (one coroutine
  each: call, wait for the answer, call again), each group one ``app_id`` on
  one LB, spread over a few channels per LB. A call counts when it completes
  inside the window ``start_at .. end_at`` (system-wide monotonic clock, shared
  with the benchmark process); its latency is kept whatever its start, so the
  window sees the steady state's whole latency distribution. Errors are counted
  over the whole run, warm-up included. Calls still open at ``end_at`` are
  cancelled by the client.
* ``burst(Burst)`` — ``calls`` calls sent at once (call ``i`` to app
  ``apps[i % len(apps)]``); every call's index, app, status and completion
  time come back, so the benchmark can compare completion order with arrival
  order. Call ``i`` goes out on channel ``i % channels``; only within one
  channel (one HTTP/2 connection) is send order also the LB's arrival order.

Every call carries a unique ``call_id`` (the LB passes it to the runner), so a
call run twice shows up twice in the runners' logs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Burst", "ClosedLoop", "burst", "closed_loop", "ping"]


@dataclass(frozen=True)
class ClosedLoop:
    targets: tuple[str, ...]  # LB addresses
    groups: tuple[tuple[int, str, int], ...]  # (index into targets, app_id, clients)
    sleep_ms: int
    start_at: float  # time.monotonic() when the measured window opens
    end_at: float  # ... and closes: no new call, open calls are cancelled
    channels: int = 4  # per LB
    timeout_s: float = 30.0
    id_prefix: str = "ov"
    keep_ids: bool = False  # return the call_id of every OK call


@dataclass(frozen=True)
class Burst:
    target: str
    calls: int
    apps: tuple[str, ...]
    sleep_ms: int
    send_at: float  # time.monotonic() when the calls go out
    channels: int = 4
    max_seconds: float = 60.0  # calls open after this long are cancelled ("unfinished")
    id_prefix: str = "burst"


def ping(_: object = None) -> int:
    """Warm the pool process up: imports done before the first window."""
    import grpc  # noqa: F401

    from fnlb.v1 import lb_pb2_grpc  # noqa: F401

    return os.getpid()


def closed_loop(spec: ClosedLoop) -> dict[str, Any]:
    return asyncio.run(_closed_loop(spec))


def burst(spec: Burst) -> dict[str, Any]:
    return asyncio.run(_burst(spec))


def _channels(target: str, n: int) -> list[Any]:
    import grpc

    # A distinct argument per channel: channels with equal arguments share one connection.
    return [grpc.aio.insecure_channel(target, options=[("fnlb.bench.conn", i)])
            for i in range(n)]


async def _closed_loop(spec: ClosedLoop) -> dict[str, Any]:
    import grpc

    from fnlb.v1 import lb_pb2, lb_pb2_grpc

    chans = [_channels(t, spec.channels) for t in spec.targets]
    for ch in (c for per_lb in chans for c in per_lb):
        await asyncio.wait_for(ch.channel_ready(), 10)
    stubs = [[lb_pb2_grpc.LoadBalancerStub(c) for c in per_lb] for per_lb in chans]
    clock = time.monotonic
    done: list[tuple[str, float, float]] = []  # (app, started, ended) of OK calls in the window
    errors: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    ok_ids: list[str] = []
    sent = 0

    async def client(lb: int, app: str, k: int) -> None:
        nonlocal sent
        stub = stubs[lb][k % spec.channels]
        n = 0
        while clock() < spec.end_at:
            call_id = f"{spec.id_prefix}-{lb}-{app}-{k}-{n}"
            n += 1
            req = lb_pb2.InvokeRequest(fn_id=f"{app}-fn", app_id=app, call_id=call_id,
                                       config={"sleep_ms": str(spec.sleep_ms)})
            t0 = clock()
            sent += 1
            try:
                resp = await stub.Invoke(req, timeout=spec.timeout_s)
                code = "OK" if resp.status_code == 200 else f"HTTP_{resp.status_code}"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                if len(samples) < 5:
                    samples.append(f"{code}: {e.details()}")
            t1 = clock()
            if code != "OK":
                errors[code] += 1
                continue
            if spec.keep_ids:
                ok_ids.append(call_id)
            if spec.start_at <= t1 <= spec.end_at:
                done.append((app, t0, t1))

    tasks = [asyncio.ensure_future(client(lb, app, k))
             for lb, app, n in spec.groups for k in range(n)]
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, spec.start_at - clock()))
    cpu_start = time.process_time()
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, spec.end_at - clock()))
    cpu_end = time.process_time()
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for ch in (c for per_lb in chans for c in per_lb):
        await ch.close()
    window = spec.end_at - spec.start_at
    return {"done": done, "errors": dict(errors), "error_samples": samples, "sent": sent,
            "ok_ids": ok_ids, "cancelled_at_end": len(pending),
            "client_cpu_pct": 100 * (cpu_end - cpu_start) / window if window > 0 else 0.0,
            "client_cpu_s": cpu_end - cpu0}


async def _burst(spec: Burst) -> dict[str, Any]:
    import grpc

    from fnlb.v1 import lb_pb2, lb_pb2_grpc

    chans = _channels(spec.target, spec.channels)
    for ch in chans:
        await asyncio.wait_for(ch.channel_ready(), 10)
    stubs = [lb_pb2_grpc.LoadBalancerStub(c) for c in chans]
    reqs = [lb_pb2.InvokeRequest(fn_id=f"{app}-fn", app_id=app,
                                 config={"sleep_ms": str(spec.sleep_ms)}) for app in spec.apps]
    clock = time.monotonic
    # (index, app, code, seconds from send_at to the answer)
    out: list[tuple[int, str, str, float]] = []
    details: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        req = lb_pb2.InvokeRequest()
        req.CopyFrom(reqs[i % len(reqs)])
        req.call_id = f"{spec.id_prefix}-{i}"
        app = spec.apps[i % len(spec.apps)]
        try:
            resp = await stubs[i % len(stubs)].Invoke(req)
            code = "OK" if resp.status_code == 200 else f"HTTP_{resp.status_code}"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            details[f"{code}: {(e.details() or '')[:80]}"] += 1
        except asyncio.CancelledError:
            out.append((i, app, "unfinished", clock() - spec.send_at))
            raise
        out.append((i, app, code, clock() - spec.send_at))

    await asyncio.sleep(max(0.0, spec.send_at - clock()))
    tasks = [asyncio.ensure_future(one(i)) for i in range(spec.calls)]
    _, pending = await asyncio.wait(tasks, timeout=spec.max_seconds)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for ch in chans:
        await ch.close()
    return {"calls": out, "details": dict(details.most_common(6))}
