"""Response size: what --max-response-bytes lets through, and how a bigger response fails.

Against real runner-stub processes (and a real `fnlb serve` for the large
responses); the LB-side cut-off against the tiny in-process runners of
tests/inproc.py, which ignore the limit as fn's runners do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.calls import LBCall
from fnlb.config import LBConfig
from fnlb.errors import RunnerError
from fnlb.front import _StreamSink
from fnlb.harness import Proc, running_stubs
from fnlb.metrics import Metrics
from fnlb.server import LBServer
from fnlb.transport import GrpcRunner
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2, runner_pb2_grpc
from tests.inproc import EchoBothRunner, StreamOnlyRunner
from tests.test_lb_e2e import lb
from tests.test_unary_call import lb_call

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LIMIT_MSG = "(--max-response-bytes)"


@contextlib.asynccontextmanager
async def front(addr: str) -> AsyncIterator[lb_pb2_grpc.LoadBalancerStub]:
    # A client that takes big Invoke responses (gRPC's default is 4 MiB).
    async with grpc.aio.insecure_channel(addr, options=[
            ("grpc.max_receive_message_length", 128 * MiB)]) as ch:
        yield lb_pb2_grpc.LoadBalancerStub(ch)


async def stream_call(stub: lb_pb2_grpc.LoadBalancerStub, **config: str
                      ) -> tuple[lb_pb2.InvokeResponse | None, int, list[int]]:
    """InvokeStream with an empty body: (the response message, body bytes, piece sizes)."""
    async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
        yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(fn_id="big", config=config))

    head, size, pieces = None, 0, []
    async for msg in stub.InvokeStream(requests(), timeout=120):
        if msg.WhichOneof("msg") == "response":
            assert head is None and size == 0  # `response` first, once
            head = msg.response
        else:
            assert msg.data.count(b"x") == len(msg.data)
            size += len(msg.data)
            pieces.append(len(msg.data))
    return head, size, pieces


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Proc, Proc]]:
    # Default limits: --max-body-bytes 8 MiB, --max-response-bytes 64 MiB.
    with running_stubs(1, ["--log-level", "debug"]) as (stub,), lb([stub.addr]) as lb_proc:
        yield stub, lb_proc


async def test_unary_invoke_carries_a_20_mib_response(cluster: tuple[Proc, Proc]) -> None:
    stub, lb_proc = cluster
    async with front(lb_proc.addr) as lb_stub:
        resp = await lb_stub.Invoke(lb_pb2.InvokeRequest(
            fn_id="big", config={"response_size": str(20 * MiB)}), timeout=60)
    assert resp.status_code == 200 and resp.runner == stub.addr
    assert len(resp.body) == 20 * MiB and resp.body.count(b"x") == 20 * MiB


async def test_invoke_stream_carries_a_100_mib_response(cluster: tuple[Proc, Proc]) -> None:
    stub, _ = cluster
    async with small_limit_lb(stub.addr, limit=128 * MiB) as server, \
            front(server.address) as lb_stub:
        head, size, pieces = await stream_call(lb_stub, response_size=str(100 * MiB))
    assert head is not None and head.status_code == 200 and head.runner == stub.addr
    assert head.attempts == 1 and head.body == b""
    assert size == 100 * MiB
    assert max(pieces) <= 64 * 1024 + 10 * 1024  # pieces of ~64 KiB, never the whole body


async def test_a_streaming_sink_takes_tryexec(in_process: Any,
                                              make_runner: Callable[..., GrpcRunner]) -> None:
    """InvokeStream's sink gets its response in frames, whatever its size: never Call/Calls."""
    servicer = EchoBothRunner()
    counting = await in_process(servicer)
    runner = make_runner(servicer.addr)
    sink = _StreamSink()
    call = LBCall(lb_call(b"abc").model, b"abc", sink)
    assert (await runner.try_exec(call)).error is None
    assert counting.methods == Counter({"TryExec": 1})
    assert (sink.runner, sink.status_code) == (servicer.addr, 200)
    sink.close()
    assert [piece async for piece in sink.body()] == [b"abc"]


async def test_cancelling_invoke_stream_cancels_the_call(cluster: tuple[Proc, Proc]) -> None:
    stub, lb_proc = cluster
    mark = len(stub.read_lines())
    async with front(lb_proc.addr) as lb_stub:
        async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
            yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(
                fn_id="slow", call_id="stream-cancel", config={"sleep_ms": "20000"}))

        call = lb_stub.InvokeStream(requests(), timeout=60)
        await asyncio.to_thread(stub.wait_for_line, r'msg="function started"', 10, mark)
        call.cancel()
        await asyncio.to_thread(
            stub.wait_for_line, r'msg="call canceled" call_id=stream-cancel', 10, mark)


@pytest.fixture(scope="module")
def small_stub() -> Iterator[Proc]:
    with running_stubs(1) as (stub,):
        yield stub


@contextlib.asynccontextmanager
async def small_limit_lb(runner: str, limit: int = MiB) -> AsyncIterator[LBServer]:
    cfg = LBConfig(listen="127.0.0.1:0", metrics_listen="", admin_listen="",
                   runners=(runner,), max_response_bytes=limit)
    async with LBServer(cfg, metrics=Metrics()) as server:
        yield server


async def _stub_counters(addr: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(addr) as ch:
        st = await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)
    return {k: int(st.customStatus[k]) for k in ("failed", "completed")}


async def test_a_response_at_the_limit_passes(small_stub: Proc) -> None:
    async with small_limit_lb(small_stub.addr) as server, front(server.address) as lb_stub:
        resp = await lb_stub.Invoke(lb_pb2.InvokeRequest(
            fn_id="big", config={"response_size": str(MiB)}), timeout=30)
        assert len(resp.body) == MiB
        head, size, _ = await stream_call(lb_stub, response_size=str(MiB))
        assert head is not None and size == MiB


async def test_a_response_over_the_limit_fails_before_its_body(small_stub: Proc) -> None:
    before = await _stub_counters(small_stub.addr)
    want = (f"response body of {MiB + 1} bytes exceeds the LB's limit of {MiB} bytes "
            f"{LIMIT_MSG}")
    async with small_limit_lb(small_stub.addr) as server, front(server.address) as lb_stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await lb_stub.Invoke(lb_pb2.InvokeRequest(
                fn_id="big", config={"response_size": str(MiB + 1)}), timeout=30)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, want)
        seen: list[Any] = []

        async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
            yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(
                fn_id="big", config={"response_size": str(MiB + 1)}))

        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for msg in lb_stub.InvokeStream(requests(), timeout=30):
                seen.append(msg)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, want)
        assert seen == []  # not even the `response` message: the function's answer never began
    after = await _stub_counters(small_stub.addr)
    # The functions ran (committed) and failed on the runner, not at the LB.
    assert (after["failed"] - before["failed"], after["completed"]) == (2, before["completed"])


async def test_the_runner_fails_a_too_big_response_before_result_start(small_stub: Proc) -> None:
    """On TryExec too: the only message is finished{509} (runner.proto, RESPONSE SIZE)."""
    async with grpc.aio.insecure_channel(small_stub.addr) as ch:
        tc = runner_pb2.TryCall(models_call_json='{"id": "c1", "fn_id": "big", '
                                                 '"config": {"response_size": "5000"}}')
        tc.extensions["fnlb.max_response_bytes"] = "4999"
        msgs = [m async for m in runner_pb2_grpc.RunnerStub(ch).TryExec(iter([
            runner_pb2.ClientMsg(**{"try": tc}),  # type: ignore[arg-type]
            runner_pb2.ClientMsg(data=runner_pb2.DataFrame(eof=True))]), timeout=10)]
    assert [m.WhichOneof("body") for m in msgs] == ["finished"]
    f = msgs[0].finished
    assert (f.success, f.errorCode, f.errorUser) == (False, 509, True)
    assert f.errorStr.endswith(f"limit of 4999 bytes {LIMIT_MSG}")


async def test_a_bad_limit_in_the_extensions_is_invalid_argument(small_stub: Proc) -> None:
    async with grpc.aio.insecure_channel(small_stub.addr) as ch:
        tc = runner_pb2.TryCall(models_call_json='{"id": "c2", "fn_id": "f"}')
        tc.extensions["fnlb.max_response_bytes"] = "-1"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await runner_pb2_grpc.RunnerStub(ch).Call(
                runner_pb2.CallRequest(**{"try": tc}), timeout=10)  # type: ignore[arg-type]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fnlb.max_response_bytes must be a whole number of bytes > 0" in str(e.value.details())


@pytest.mark.parametrize("servicer", [StreamOnlyRunner(), EchoBothRunner()],
                         ids=["tryexec", "call"])
async def test_the_lb_cuts_off_a_runner_that_ignores_the_limit(
        servicer: StreamOnlyRunner, in_process: Any,
        make_runner: Callable[..., GrpcRunner]) -> None:
    await in_process(servicer)
    runner = make_runner(servicer.addr, calls=False, max_response_bytes=1000)
    call = lb_call(b"y" * 1001)  # the runners echo the body
    attempt = await runner.try_exec(call)
    assert attempt.placed and isinstance(attempt.error, RunnerError)
    assert (attempt.error.error_code, attempt.error.user_error) == (509, True)
    assert str(attempt.error).endswith(f"exceeds the limit of 1000 bytes {LIMIT_MSG}")
    assert call.response.body() == b""  # type: ignore[attr-defined]
    ok = lb_call(b"y" * 1000)
    assert (await runner.try_exec(ok)).error is None
    assert ok.response.body() == b"y" * 1000  # type: ignore[attr-defined]


async def test_invoke_stream_ends_with_the_error_after_a_started_response(
        in_process: Any) -> None:
    """A runner that ignores the limit is cut off after `response` went out: the status says so."""
    servicer = StreamOnlyRunner()
    await in_process(servicer)
    async with small_limit_lb(servicer.addr, limit=1000) as server, \
            front(server.address) as lb_stub:

        async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
            yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(
                fn_id="echo", body=b"z" * 5000))

        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for msg in lb_stub.InvokeStream(requests(), timeout=30):
                seen.append(msg.WhichOneof("msg"))
    assert seen == ["response"]
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(e.value.details()).endswith(f"exceeds the limit of 1000 bytes {LIMIT_MSG}")
