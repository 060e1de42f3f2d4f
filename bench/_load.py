"""The load generator of the data-path benchmark: runs inside a client process.

One ``LoadSpec`` describes one client process's share of a run. ``run_load``
is the process entry point (picklable, for a spawn-context process pool): it
drives ``concurrency`` coroutines that call back to back, either

* ``direct`` — speaking ``fnlb.v1.Runner/TryExec`` to the runner stubs itself
  (round robin), exactly as the LB does: ``try``, body ``data`` frames ending
  with ``eof``, then reading ``result_start``/``data``/``finished``; or
* ``lb`` — calling ``fnlb.v1.LoadBalancer/Invoke`` (unary).

All processes of a run share one measurement window on the system-wide
monotonic clock (``start_at`` .. ``end_at``): calls before it are warm-up, a
call counts when it completes inside it, and its latency is kept when it also
started inside it. Each process reports its own CPU time over the window, so
the benchmark can tell when the load generator itself is the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadSpec", "run_load", "hold_calls", "ping"]

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


@dataclass(frozen=True)
class LoadSpec:
    mode: str  # "direct" | "lb"
    targets: tuple[str, ...]  # runner stubs (direct) or the LB (lb)
    concurrency: int
    body_size: int
    start_at: float  # time.monotonic() when the measured window opens
    end_at: float  # ... and closes; calls stop being issued then
    calls: int = 0  # > 0: issue exactly this many calls instead (window ignored)
    chunk_size: int = 0  # direct: body frame size; 0 = the LB's own (fnlb.transport)
    config: dict[str, str] = field(default_factory=dict)
    fn_id: str = "bench-echo"
    memory_mb: int = 128
    timeout_s: float = 60.0
    # lb: connections to the LB, used round robin. An LB with --workers N hands
    # each connection to one worker (SO_REUSEPORT), so use several.
    lb_connections: int = 1


def ping(_: object = None) -> int:
    """Warm a pool process up (imports done once, before any window opens)."""
    import grpc  # noqa: F401

    from fnlb.v1 import lb_pb2_grpc, runner_pb2_grpc  # noqa: F401

    time.sleep(0.3)  # keep this worker busy so the next ping lands on another one
    return os.getpid()


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Process entry point: run ``spec`` and return counts, latencies and CPU time."""
    return asyncio.run(_run(spec))


def _call_json(fn_id: str, memory_mb: int, config: dict[str, str]) -> tuple[str, str]:
    """fn's models.Call JSON around a call id placeholder (split in two halves)."""
    import json

    rest = json.dumps({"app_id": "bench", "fn_id": fn_id, "image": "bench/echo:1",
                       "type": "sync", "timeout": 30, "idle_timeout": 30,
                       "memory": memory_mb, "cpus": 0, "config": config, "headers": {},
                       "created_at": "2026-01-01T00:00:00.000Z"}, separators=(",", ":"))
    return '{"id":"', '",' + rest[1:]


async def _run(spec: LoadSpec) -> dict[str, Any]:
    import grpc

    from fnlb.transport import CHUNK_SIZE
    from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2, runner_pb2_grpc

    EOF = grpc.aio.EOF
    chunk_size = spec.chunk_size or CHUNK_SIZE
    body = os.urandom(spec.body_size) if spec.body_size > 64 else b"x" * spec.body_size
    targets = (spec.targets if spec.mode == "direct"
               else spec.targets[:1] * max(1, spec.lb_connections))
    # A distinct argument per channel: channels with equal arguments would
    # share one connection.
    channels = [grpc.aio.insecure_channel(t, options=[*_CHANNEL_OPTIONS, ("fnlb.bench.conn", i)])
                for i, t in enumerate(targets)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)

    counters = {"ok": 0, "errors": 0, "nacks": 0, "bad": 0}
    latencies = array("d")
    error_samples: list[str] = []

    if spec.mode == "direct":
        stubs = [runner_pb2_grpc.RunnerStub(ch) for ch in channels]
        head, tail = _call_json(spec.fn_id, spec.memory_mb, spec.config)
        pid = os.getpid()
        ids = itertools.count()
        data_msgs: list[Any] = []
        if not body:
            data_msgs.append(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(eof=True)))
        for off in range(0, len(body), chunk_size):
            end = off + chunk_size
            data_msgs.append(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(
                data=body[off:end], eof=end >= len(body))))
        rr = itertools.cycle(range(len(stubs)))

        async def one_call() -> str:
            call_id = f"b{pid}-{next(ids)}"
            try_msg = runner_pb2.ClientMsg(**{"try": runner_pb2.TryCall(
                models_call_json=head + call_id + tail, slot_hash_id=spec.fn_id)})
            stream = stubs[next(rr)].TryExec()
            await stream.write(try_msg)
            for m in data_msgs:
                await stream.write(m)
            await stream.done_writing()
            got = 0
            started = False
            while True:
                msg = await stream.read()
                if msg is EOF:
                    return "bad"
                kind = msg.WhichOneof("body")
                if kind == "data":
                    got += len(msg.data.data)
                elif kind == "result_start":
                    started = True
                elif kind == "finished":
                    f = msg.finished
                    if f.success:
                        return "ok" if got == len(body) else "bad"
                    if not started and f.errorCode == 503:
                        return "nacks"
                    return "errors"
    else:
        lbs = [lb_pb2_grpc.LoadBalancerStub(ch) for ch in channels]
        next_lb = itertools.cycle(lbs).__next__
        req = lb_pb2.InvokeRequest(fn_id=spec.fn_id, app_id="bench", body=body,
                                   memory_mb=spec.memory_mb, config=spec.config)

        async def one_call() -> str:
            resp = await next_lb().Invoke(req, timeout=spec.timeout_s)
            if resp.status_code != 200 or len(resp.body) != len(body):
                return "bad"
            return "ok"

    counted = spec.calls > 0
    tickets = itertools.count()
    start_at, end_at = spec.start_at, spec.end_at
    clock = time.monotonic

    async def worker() -> None:
        while True:
            if counted:
                if next(tickets) >= spec.calls:
                    return
            elif clock() >= end_at:
                return
            t0 = clock()
            try:
                outcome = await one_call()
            except grpc.aio.AioRpcError as e:
                outcome = "errors"
                if len(error_samples) < 5:
                    error_samples.append(f"{e.code().name}: {e.details()}")
            t1 = clock()
            if counted or start_at <= t1 <= end_at:
                counters[outcome] += 1
                if outcome == "ok" and (counted or t0 >= start_at):
                    latencies.append(t1 - t0)

    cpu: dict[str, float] = {}

    async def cpu_window() -> None:
        if counted:
            return
        await asyncio.sleep(max(0.0, start_at - clock()))
        cpu["start"] = time.process_time()
        cpu["start_wall"] = clock()
        await asyncio.sleep(max(0.0, end_at - clock()))
        cpu["end"] = time.process_time()
        cpu["end_wall"] = clock()

    c0, w0 = time.process_time(), clock()
    await asyncio.gather(cpu_window(), *(worker() for _ in range(spec.concurrency)))
    if counted:
        cpu = {"start": c0, "end": time.process_time(), "start_wall": w0, "end_wall": clock()}
    for ch in channels:
        await ch.close()
    return {
        "pid": os.getpid(),
        **counters,
        "error_samples": error_samples,
        "latencies": latencies.tobytes(),
        "cpu_s": cpu.get("end", 0.0) - cpu.get("start", 0.0),
        "wall_s": cpu.get("end_wall", 0.0) - cpu.get("start_wall", 0.0),
    }


def hold_calls(lb: str, n: int, sleep_ms: int, memory_mb: int = 1) -> dict[str, int]:
    """Put ``n`` calls in flight through the LB at once (each held ``sleep_ms``)."""

    async def main() -> dict[str, int]:
        import grpc

        from fnlb.v1 import lb_pb2, lb_pb2_grpc

        out = {"ok": 0, "errors": 0}
        async with grpc.aio.insecure_channel(lb, options=_CHANNEL_OPTIONS) as ch:
            stub = lb_pb2_grpc.LoadBalancerStub(ch)
            req = lb_pb2.InvokeRequest(fn_id="bench-hold", body=b"hold", memory_mb=memory_mb,
                                       config={"sleep_ms": str(sleep_ms)})

            async def one() -> None:
                try:
                    resp = await stub.Invoke(req, timeout=sleep_ms / 1000 + 60)
                    out["ok" if resp.status_code == 200 else "errors"] += 1
                except grpc.aio.AioRpcError:
                    out["errors"] += 1

            await asyncio.gather(*(one() for _ in range(n)))
        return out

    return asyncio.run(main())
