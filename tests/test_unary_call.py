"""The negotiated unary fast path, Runner/Call: the stub serves it, the LB uses it.

Against real stub processes (and a real LB for the crash case), plus a tiny
in-process TryExec-only runner standing in for fn-compatible runners.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb import harness
from fnlb.calls import LBCall
from fnlb.errors import ClientCanceled, RunnerError, ServerTooBusy
from fnlb.runnerpool import CallModel
from fnlb.transport import GrpcRunner
from fnlb.v1 import lb_pb2, runner_pb2
from tests.inproc import EchoBothRunner, StreamOnlyRunner
from tests.test_lb_e2e import invoke_req, lb, lb_stub, runner_status

MiB = 1024 * 1024


def call_json(fn_id: str = "echo", **fields: Any) -> str:
    return json.dumps({"id": uuid.uuid4().hex, "fn_id": fn_id, "app_id": "app", "type": "sync",
                       "image": "fake/" + fn_id, **fields})


def call_request(body: bytes = b"", **fields: Any) -> runner_pb2.CallRequest:
    return runner_pb2.CallRequest(**{"try": runner_pb2.TryCall(  # type: ignore[arg-type]
        models_call_json=call_json(**fields))}, body=body)


def lb_call(body: bytes = b"hello", call_type: str = "sync",
            config: dict[str, str] | None = None) -> LBCall:
    return LBCall(CallModel(id=uuid.uuid4().hex, fn_id="echo", app_id="app", type=call_type,
                            image="fake/echo", config=dict(config or {})), body)


def stub_proc(*args: str) -> Any:
    return harness.running("runner_stub",
                           ["--listen", "127.0.0.1:0", "--log-level", "debug", *args])


@pytest.fixture
def runners(make_runner: Callable[..., GrpcRunner]) -> Callable[..., GrpcRunner]:
    # Runner/Calls is tested in test_call_stream.py; here Call alone.
    return functools.partial(make_runner, calls=False)


def forbid_stream(runner: GrpcRunner) -> None:
    """Make the runner's TryExec fail the test: the call must go over Call."""

    def no_stream(*a: Any, **kw: Any) -> Any:
        raise AssertionError("TryExec used")

    runner._stub.TryExec = no_stream  # type: ignore[method-assign]


# -- the stub serves Call -----------------------------------------------------


async def test_call_echo_on_the_stub(channel_to: Any) -> None:
    with stub_proc() as proc:
        runner = channel_to(proc.addr)
        st = await runner.Status(empty_pb2.Empty(), timeout=10)
        assert "call" in st.features
        reply = await runner.Call(call_request(b"ping"), timeout=10)
        assert reply.http.status_code == 200
        assert {h.key: h.value for h in reply.http.headers}["x-runner-id"] == proc.addr
        assert reply.body == b"ping"
        f = reply.finished
        assert f.success and f.details and f.createdAt and f.startedAt and f.completedAt
        assert f.executionDuration > 0
        # The function's own status and a big answer fit in one reply.
        reply = await runner.Call(call_request(b"", config={"status": "404"}), timeout=10)
        assert reply.http.status_code == 404 and reply.finished.success
        big = bytes(range(256)) * 4096 * 2  # 2 MiB answer
        reply = await runner.Call(call_request(big), timeout=30)
        assert reply.body == big
        st = await runner.Status(empty_pb2.Empty(), timeout=10)
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (3, 3, 0)


async def test_call_errors_on_the_stub(channel_to: Any) -> None:
    with stub_proc("--max-body-bytes", "100") as proc:
        runner = channel_to(proc.addr)
        # A detached call is acknowledged before it runs: TryExec only.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await runner.Call(call_request(b"x", type="detached"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await runner.Call(runner_pb2.CallRequest(body=b"x"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = await runner.Call(call_request(b"x" * 101), timeout=10)
        assert not reply.HasField("http")
        assert (reply.finished.success, reply.finished.errorCode) == (False, 413)
        reply = await runner.Call(call_request(b"x", config={"fail": "boom"}), timeout=10)
        assert not reply.HasField("http")
        assert (reply.finished.errorCode, reply.finished.errorUser) == (502, True)
        # An answer over the LB's limit: a clear committed error, no body sent.
        req = call_request(b"", config={"response_size": str(2 * MiB)})
        getattr(req, "try").extensions["fnlb.max_response_bytes"] = str(MiB)
        reply = await runner.Call(req, timeout=30)
        assert not reply.HasField("http") and reply.body == b""
        assert (reply.finished.errorCode, reply.finished.errorUser) == (509, True)
        assert reply.finished.errorStr == (
            f"response body of {2 * MiB} bytes exceeds the LB's limit of {MiB} bytes "
            "(--max-response-bytes)")


async def test_call_nack_when_the_slots_are_full(channel_to: Any, runners: Any) -> None:
    with stub_proc("--slots", "1", "--nack-after-ms", "50") as proc:
        runner = channel_to(proc.addr)
        hold = asyncio.ensure_future(
            runner.Call(call_request(b"", config={"sleep_ms": "1500"}), timeout=10))
        await asyncio.to_thread(proc.wait_for_line, r'msg="function started"')
        reply = await runner.Call(call_request(b"x"), timeout=10)
        assert not reply.HasField("http")
        assert (reply.finished.success, reply.finished.errorCode) == (False, 503)
        # The LB reads that as a NACK: not placed, try elsewhere.
        gr = runners(proc.addr)
        forbid_stream(gr)
        attempt = await gr.try_exec(lb_call(b"x"))
        assert not attempt.placed and isinstance(attempt.error, ServerTooBusy)
        assert gr.unary
        assert (await hold).finished.success
        st = await runner.Status(empty_pb2.Empty(), timeout=10)
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (3, 1, 2)


async def test_crash_mid_call_via_call_is_an_error_not_a_retry(runners: Any) -> None:
    with stub_proc() as proc:
        gr = runners(proc.addr)
        forbid_stream(gr)
        attempt = await gr.try_exec(lb_call(config={"crash": "yes"}))
        assert attempt.placed and isinstance(attempt.error, RunnerError)
        assert not isinstance(attempt.error, ClientCanceled)
        assert await asyncio.to_thread(proc.wait) == 3


@pytest.mark.slow
async def test_crash_through_the_lb_is_not_rerun_elsewhere() -> None:
    with harness.running_stubs(2) as stubs, lb([s.addr for s in stubs]) as front:
        async with lb_stub(front) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Invoke(invoke_req(crash="1"), timeout=20)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            for _ in range(200):
                if any(s.popen.poll() is not None for s in stubs):
                    break
                await asyncio.sleep(0.05)
            crashed = [s for s in stubs if s.popen.poll() is not None]
            assert len(crashed) == 1
            alive = next(s for s in stubs if s is not crashed[0])
            assert (await runner_status(alive.addr)).requestsReceived == 0  # type: ignore[attr-defined]
            resp = await stub.Invoke(invoke_req(body=b"again"), timeout=10)
            assert resp.runner == alive.addr and resp.body == b"again"


# -- runners without Call ------------------------------------------------------


async def test_stream_only_runner_falls_back_once(in_process: Any, runners: Any) -> None:
    servicer = StreamOnlyRunner()
    counting = await in_process(servicer)
    gr = runners(servicer.addr)
    call = lb_call(b"first")
    attempt = await gr.try_exec(call)
    assert attempt.placed and attempt.error is None
    assert call.response.body() == b"first"  # type: ignore[attr-defined]
    assert not gr.unary
    call = lb_call(b"second")
    assert (await gr.try_exec(call)).error is None
    assert call.response.body() == b"second"  # type: ignore[attr-defined]
    assert counting.methods["Call"] == 1 and counting.methods["TryExec"] == 2


async def test_unary_false_never_probes(in_process: Any, runners: Any) -> None:
    servicer = EchoBothRunner()
    counting = await in_process(servicer)
    gr = runners(servicer.addr, unary=False)
    assert (await gr.try_exec(lb_call(b"x"))).error is None
    assert counting.methods["Call"] == 0 and counting.methods["TryExec"] == 1


async def test_big_bodies_and_detached_calls_go_over_tryexec(in_process: Any,
                                                            runners: Any) -> None:
    servicer = EchoBothRunner()
    counting = await in_process(servicer)
    gr = runners(servicer.addr)
    big = b"y" * (2 * MiB)
    call = lb_call(big)
    assert (await gr.try_exec(call)).error is None
    assert call.response.body() == big  # type: ignore[attr-defined]
    assert counting.methods == Counter({"TryExec": 1})
    assert (await gr.try_exec(lb_call(b"d", call_type="detached"))).error is None
    assert counting.methods == Counter({"TryExec": 2})
    call = lb_call(b"small")
    assert (await gr.try_exec(call)).error is None
    assert call.response.body() == b"small"  # type: ignore[attr-defined]
    assert counting.methods == Counter({"TryExec": 2, "Call": 1})
    assert gr.unary


@pytest.mark.slow
async def test_lb_serves_a_stream_only_runner(in_process: Any) -> None:
    servicer = StreamOnlyRunner()
    counting = await in_process(servicer)
    with lb([servicer.addr]) as front:
        async with lb_stub(front) as stub:
            for body in (b"one", b"two", b"three"):
                resp = await stub.Invoke(lb_pb2.InvokeRequest(fn_id="echo", body=body),
                                         timeout=10)
                assert resp.body == body and resp.runner == servicer.addr
    # Probed at most once each (the LB may learn from Status first, then never).
    assert counting.methods["Call"] <= 1 and counting.methods["Calls"] <= 1
    assert counting.methods["TryExec"] == 3
