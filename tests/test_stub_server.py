"""StubServer lifecycle in process: start, drain, stop twice, async with."""

from __future__ import annotations

import asyncio
import json
import random

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.v1 import runner_pb2 as pb
from fnlb.v1 import runner_pb2_grpc
from runner_stub import StubConfig, StubServer
from runner_stub.errors import StartupError


def _call_msgs(config: dict[str, str] | None = None) -> list[pb.ClientMsg]:
    text = json.dumps({"id": "c1", "fn_id": "f", "config": config or {}})
    return [pb.ClientMsg(**{"try": pb.TryCall(models_call_json=text)}),
            pb.ClientMsg(data=pb.DataFrame(data=b"hi", eof=True))]


async def test_async_with_serves_and_stop_is_idempotent() -> None:
    async with StubServer(StubConfig(listen="127.0.0.1:0", runner_id="r-1")) as server:
        assert server.addr.startswith("127.0.0.1:") and not server.addr.endswith(":0")
        async with grpc.aio.insecure_channel(server.addr) as ch:
            runner = runner_pb2_grpc.RunnerStub(ch)
            msgs = [m async for m in runner.TryExec(iter(_call_msgs()), timeout=10)]
            assert msgs[-1].finished.success
            st = await runner.Status(empty_pb2.Empty(), timeout=10)
            assert (st.runner_id, st.requestsHandled) == ("r-1", 1)
        await server.stop(0)
        await server.stop(0)  # a second stop is harmless
        await asyncio.wait_for(server.wait_closed(), 10)
    await server.stop(1)  # and so is a third, after __aexit__


async def test_shutdown_waits_for_inflight_calls_then_stops(accepted: asyncio.Event) -> None:
    server = StubServer(StubConfig(listen="127.0.0.1:0"))
    await server.start()
    async with grpc.aio.insecure_channel(server.addr) as ch:
        runner = runner_pb2_grpc.RunnerStub(ch)
        stream = runner.TryExec(iter(_call_msgs({"sleep_ms": "300"})), timeout=10)
        first = asyncio.ensure_future(stream.read())
        await accepted.wait()  # the function is sleeping now
        await server.shutdown(10)
        assert (await first).WhichOneof("body") == "result_start"
        rest = []
        while (msg := await stream.read()) is not grpc.aio.EOF:
            rest.append(msg)
        assert rest[-1].finished.success
    assert server.service.draining and server.service.active == 0
    await asyncio.wait_for(server.wait_closed(), 10)


async def test_injected_rng_makes_fail_rate_reproducible() -> None:
    rng = random.Random(1)
    cfg = StubConfig(listen="127.0.0.1:0", fail_rate=0.5)
    async with StubServer(cfg, rng=rng) as server, \
            grpc.aio.insecure_channel(server.addr) as ch:
        runner = runner_pb2_grpc.RunnerStub(ch)
        got = []
        for _ in range(8):
            msgs = [m async for m in runner.TryExec(iter(_call_msgs()), timeout=10)]
            got.append(msgs[-1].finished.success)
    expect_rng = random.Random(1)
    assert got == [not (expect_rng.random() < 0.5) for _ in range(8)]


async def test_port_in_use_is_a_startup_error() -> None:
    async with StubServer(StubConfig(listen="127.0.0.1:0")) as first:
        second = StubServer(StubConfig(listen=first.addr))
        with pytest.raises(StartupError, match="cannot bind"):
            await second.start()
