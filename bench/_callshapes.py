"""What one LB->runner call costs the caller in grpc.aio, by call shape.

    python -m bench._callshapes [--calls 6000] [--concurrency 32]

Evidence for the protocol shortcut of issue 7: a trivial raw-bytes server (no
protobuf, no work) runs in a child process, and this process calls it in each
shape a runner call could take, measuring its own CPU per call:

* ``stream-iter``  today's GrpcRunner: TryExec with a request iterator (2
  messages: try, data+eof), reading result_start, data, finished, EOF;
* ``stream-rw``    the same messages written by the caller itself (no
  request-consumer task);
* ``stream-1``     the shortcut on the same bidi method: one request message
  (try with the body inside, eof) and one answer message (result + body +
  finished);
* ``unary-stream`` the shortcut as a server-streaming method (one request);
* ``unary``        one request, one answer;
* ``mux``          every call a message on one long-lived stream, answered by a
  message on it (Runner/Calls without batching: what it costs per call when
  calls arrive too slowly to share a message).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time

import grpc

from bench.datapath import cpu_seconds

_SVC = "bench.Shapes"
_FRAME = b"x" * 40  # about the size of a small DataFrame / CallFinished


def _serve(port_q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        async def stream3(req_iter, ctx):  # type: ignore[no-untyped-def]
            async for _ in req_iter:
                pass
            await ctx.write(_FRAME)
            await ctx.write(_FRAME)
            await ctx.write(_FRAME)

        async def stream3_eof(req_iter, ctx):  # type: ignore[no-untyped-def]
            # Reads up to the in-band eof (the second message), like a runner.
            await ctx.read()
            await ctx.read()
            await ctx.write(_FRAME)
            await ctx.write(_FRAME)
            await ctx.write(_FRAME)

        async def stream1(req_iter, ctx):  # type: ignore[no-untyped-def]
            async for _ in req_iter:
                pass
            await ctx.write(_FRAME)

        async def unary_stream(req, ctx):  # type: ignore[no-untyped-def]
            await ctx.write(_FRAME)

        async def unary(req, ctx):  # type: ignore[no-untyped-def]
            return _FRAME

        async def mux(req_iter, ctx):  # type: ignore[no-untyped-def]
            while (msg := await ctx.read()) is not grpc.aio.EOF:
                await ctx.write(msg[:8] + _FRAME)

        handlers = {
            "Stream3": grpc.stream_stream_rpc_method_handler(stream3),
            "Stream1": grpc.stream_stream_rpc_method_handler(stream1),
            "Stream3Eof": grpc.stream_stream_rpc_method_handler(stream3_eof),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Mux": grpc.stream_stream_rpc_method_handler(mux),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_q.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


async def _drain(call) -> int:  # type: ignore[no-untyped-def]
    n = 0
    while (await call.read()) is not grpc.aio.EOF:
        n += 1
    return n


async def _bench(addr: str, shape: str, calls: int, conc: int,
                 server_pid: int, options: list[tuple[str, int]]) -> tuple[float, float, float]:
    async with grpc.aio.insecure_channel(addr, options=options) as ch:
        await ch.channel_ready()
        s3 = ch.stream_stream(f"/{_SVC}/Stream3")
        s1 = ch.stream_stream(f"/{_SVC}/Stream1")
        s3e = ch.stream_stream(f"/{_SVC}/Stream3Eof")
        us = ch.unary_stream(f"/{_SVC}/UnaryStream")
        uu = ch.unary_unary(f"/{_SVC}/Unary")
        waiting: dict[bytes, asyncio.Future[bytes]] = {}
        seqs = iter(range(1 << 62))
        mux_call = None
        write_lock = asyncio.Lock()
        if shape == "mux":
            mux_call = ch.stream_stream(f"/{_SVC}/Mux")()

            async def mux_reader() -> None:
                while (msg := await mux_call.read()) is not grpc.aio.EOF:
                    waiting.pop(msg[:8]).set_result(msg)

            reader = asyncio.ensure_future(mux_reader())

        async def one() -> None:
            if shape == "stream-iter":
                await _drain(s3(iter((_FRAME, _FRAME))))
            elif shape == "stream-rw":
                call = s3()
                await call.write(_FRAME)
                await call.write(_FRAME)
                await call.done_writing()
                await _drain(call)
            elif shape == "stream-rw-code":
                # Read the three answers, then wait for the status instead of
                # a fourth read returning EOF.
                call = s3()
                await call.write(_FRAME)
                await call.write(_FRAME)
                await call.done_writing()
                for _ in range(3):
                    await call.read()
                await call.code()
            elif shape == "stream-rw-noclose":
                call = s3e()
                await call.write(_FRAME)
                await call.write(_FRAME)
                await _drain(call)
            elif shape == "stream-1":
                call = s1()
                await call.write(_FRAME)
                await call.done_writing()
                await _drain(call)
            elif shape == "unary-stream":
                await _drain(us(_FRAME))
            elif shape == "mux":
                assert mux_call is not None
                key = next(seqs).to_bytes(8, "big")
                fut = waiting[key] = asyncio.get_running_loop().create_future()
                async with write_lock:  # one write at a time on a stream
                    await mux_call.write(key + _FRAME)
                await fut
            else:
                await uu(_FRAME)

        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(min(conc, 8))))  # warm-up
        left = calls
        s0, c0, w0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        scpu = cpu_seconds(server_pid) - s0
        if mux_call is not None:
            await mux_call.done_writing()
            await reader
    return cpu * 1000 / calls, wall * 1000 / calls, scpu * 1000 / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shapes", default="stream-iter,stream-rw,stream-1,unary-stream,unary,mux")
    p.add_argument("--option", action="append", default=[], metavar="KEY=INT",
                   help="client channel option, e.g. grpc.enable_retries=0 (repeatable)")
    args = p.parse_args(argv)
    options = [(k, int(v)) for k, _, v in (o.partition("=") for o in args.option)]
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(q,), daemon=True)
    server.start()
    try:
        addr = f"127.0.0.1:{q.get(timeout=30)}"
        shapes = tuple(args.shapes.split(","))
        res: dict[str, list[tuple[float, float, float]]] = {s: [] for s in shapes}
        assert server.pid is not None
        for _ in range(args.reps):
            for s in shapes:
                res[s].append(asyncio.run(_bench(addr, s, args.calls, args.concurrency,
                                                 server.pid, options)))
        print(f"caller CPU per call, c={args.concurrency}, median of {args.reps} "
              f"(pid {os.getpid()}):")
        base = statistics.median(r[0] for r in res[shapes[0]])
        for s in shapes:
            cpu = statistics.median(r[0] for r in res[s])
            wall = statistics.median(r[1] for r in res[s])
            scpu = statistics.median(r[2] for r in res[s])
            print(f"  {s:<13} caller {cpu:6.3f} CPU-ms/call ({cpu / base:4.0%})  "
                  f"server {scpu:6.3f} CPU-ms/call  {wall:6.3f} wall-ms/call")
    finally:
        server.terminate()
        server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
