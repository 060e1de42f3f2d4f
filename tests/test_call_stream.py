"""The negotiated call stream, Runner/Calls: the stub serves it, the LB uses it.

Against real stub processes (and a real LB for deadlines), plus tiny
in-process runners for the ways a stream can end.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.errors import RunnerError, RunnerUnreachable, ServerTooBusy
from fnlb.transport import (
    STREAM_MAX_BODY,
    UNARY_MAX_BODY,
    CallStream,
    CallStreamFailed,
    GrpcRunner,
)
from fnlb.v1 import lb_pb2, runner_pb2, runner_pb2_grpc
from tests.inproc import EchoBothRunner, StreamOnlyRunner
from tests.test_lb_e2e import lb, lb_stub
from tests.test_unary_call import call_json, lb_call, stub_proc


def req(seq: int, body: bytes = b"", **fields: Any) -> runner_pb2.CallRequest:
    return runner_pb2.CallRequest(**{"try": runner_pb2.TryCall(  # type: ignore[arg-type]
        models_call_json=call_json(**fields))}, body=body, seq=seq)


@pytest.fixture
def runners(make_runner: Callable[..., GrpcRunner]) -> Callable[..., GrpcRunner]:
    return make_runner


async def replies(rpc: Any, n: int) -> tuple[dict[int, list[runner_pb2.CallReply]], int]:
    """Read until ``n`` replies arrived: replies by seq, and how many ReplyBatches carried them."""
    got: dict[int, list[runner_pb2.CallReply]] = {}
    batches = 0
    while sum(len(v) for v in got.values()) < n:
        msg = await rpc.read()
        assert msg is not grpc.aio.EOF, f"stream ended after {got}"
        batches += 1
        for r in msg.replies:
            got.setdefault(r.seq, []).append(r)
    return got, batches


def only_one_path(runner: GrpcRunner, path: str) -> None:
    """Make every runner RPC but ``path`` (Call or Calls) fail the test."""

    def forbidden(*a: Any, **kw: Any) -> Any:
        raise AssertionError(f"a call left {path}")

    for name in {"TryExec", "Call", "Calls"} - {path}:
        setattr(runner._stub, name, forbidden)


# -- the stub serves Calls ----------------------------------------------------


async def test_stub_answers_a_batch_by_seq(channel_to: Any) -> None:
    with stub_proc() as proc:
        runner = channel_to(proc.addr)
        assert {"call", "calls"} <= set(
            (await runner.Status(empty_pb2.Empty(), timeout=10)).features)
        rpc = runner.Calls(timeout=20)
        bad = runner_pb2.CallRequest(body=b"no try", seq=4)
        await rpc.write(runner_pb2.CallBatch(calls=[
            req(1, b"one"), req(2, b"two", config={"status": "404"}), req(3, b"three"),
            bad, req(1, b"dup", config={"sleep_ms": "10"})]))
        got, _ = await replies(rpc, 5)
        # The first seq 1 runs; the duplicate, sent while it is in flight, is refused.
        one = sorted(got[1], key=lambda r: r.finished.errorCode)
        assert one[0].body == b"one" and one[0].finished.success
        assert one[1].finished.errorCode == 400 and "already in flight" in one[1].finished.errorStr
        assert got[2][0].http.status_code == 404 and got[2][0].body == b"two"
        assert got[3][0].body == b"three"
        # A malformed call is a 400 reply, not the end of the stream.
        assert got[4][0].finished.errorCode == 400 and not got[4][0].HasField("http")
        await rpc.write(runner_pb2.CallBatch(calls=[req(5, b"after")]))
        got, _ = await replies(rpc, 1)
        assert got[5][0].body == b"after"
        await rpc.done_writing()
        assert await rpc.read() is grpc.aio.EOF
        assert await rpc.code() == grpc.StatusCode.OK


async def test_stub_nacks_and_cancels_on_the_stream(channel_to: Any) -> None:
    with stub_proc("--slots", "1", "--nack-after-ms", "50") as proc:
        runner = channel_to(proc.addr)
        rpc = runner.Calls(timeout=30)
        slow = req(1, config={"sleep_ms": "20000"})
        await rpc.write(runner_pb2.CallBatch(calls=[slow]))
        await asyncio.to_thread(proc.wait_for_line, r'msg="function started"')
        await rpc.write(runner_pb2.CallBatch(calls=[req(2, b"x")]))
        got, _ = await replies(rpc, 1)
        nack = got[2][0]
        assert (nack.finished.errorCode, nack.HasField("http")) == (503, False)
        # Cancelling seq 1 stops the function and frees the slot; it gets no reply.
        await rpc.write(runner_pb2.CallBatch(cancel=[1]))
        await asyncio.to_thread(proc.wait_for_line, r'msg="call canceled"')
        await rpc.write(runner_pb2.CallBatch(calls=[req(3, b"y")]))
        got, _ = await replies(rpc, 1)
        assert list(got) == [3] and got[3][0].body == b"y"
        await rpc.done_writing()
        assert await rpc.read() is grpc.aio.EOF
        st = await runner.Status(empty_pb2.Empty(), timeout=10)
        assert st.customStatus["canceled"] == "1"
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (3, 2, 1)


async def test_stub_keeps_reply_batches_small(channel_to: Any) -> None:
    with stub_proc() as proc:
        runner = channel_to(proc.addr)
        rpc = runner.Calls(timeout=30)
        size = 700 * 1024
        await rpc.write(runner_pb2.CallBatch(calls=[
            req(i, config={"response_size": str(size)}) for i in range(1, 5)]))
        got, batches = await replies(rpc, 4)
        assert sorted(got) == [1, 2, 3, 4]
        assert all(len(r[0].body) == size for r in got.values())
        # At most 1 MiB of bodies per batch: 700 KiB replies travel one by one.
        assert batches == 4
        await rpc.done_writing()


async def test_stub_ends_streams_with_ok_after_answering_on_sigterm(channel_to: Any) -> None:
    with stub_proc() as proc:
        runner = channel_to(proc.addr)
        rpc = runner.Calls(timeout=30)
        await rpc.write(runner_pb2.CallBatch(calls=[req(1, b"z", config={"sleep_ms": "400"})]))
        await asyncio.to_thread(proc.wait_for_line, r'msg="function started"')
        proc.signal(signal.SIGTERM)
        got, _ = await replies(rpc, 1)
        assert got[1][0].body == b"z" and got[1][0].finished.success
        assert await rpc.read() is grpc.aio.EOF
        assert await rpc.code() == grpc.StatusCode.OK
        assert await asyncio.to_thread(proc.wait) == 0


# -- the LB uses Calls --------------------------------------------------------


@pytest.mark.parametrize("path", ["Calls", "Call"])
async def test_grpc_runner_fast_paths_keep_the_commit_rule(make_runner: Any, path: str) -> None:
    with stub_proc("--slots", "1", "--nack-after-ms", "50") as proc:
        gr = make_runner(proc.addr, calls=path == "Calls")
        only_one_path(gr, path)
        biggest = STREAM_MAX_BODY if path == "Calls" else UNARY_MAX_BODY  # still on the path
        call = lb_call(b"x" * biggest)
        attempt = await gr.try_exec(call)
        assert attempt.placed and attempt.error is None
        assert call.response.body() == b"x" * biggest  # type: ignore[attr-defined]
        assert call.user_execution_time is not None and call.user_execution_time > 0
        # A failed function: committed, the runner's code and errorUser.
        attempt = await gr.try_exec(lb_call(config={"fail": "boom"}))
        assert attempt.placed and isinstance(attempt.error, RunnerError)
        assert attempt.error.error_code == 502 and attempt.error.user_error
        # A client cancel stops the function on the runner; meanwhile: NACK, not placed.
        slow = lb_call(config={"sleep_ms": "20000"})
        task = asyncio.ensure_future(gr.try_exec(slow))
        await asyncio.to_thread(proc.wait_for_line,
                                rf'msg="function started" call_id={slow.model.id}')
        attempt = await gr.try_exec(lb_call(b"busy"))
        assert not attempt.placed and isinstance(attempt.error, ServerTooBusy)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(proc.wait_for_line, rf'msg="call canceled" call_id={slow.model.id}')
        st = await gr.refresh()
        assert st.active == 0 and st.slots_free == st.slots_total
        assert gr.unary and gr.calls == (path == "Calls")


async def test_bigger_bodies_use_call(runners: Any, in_process: Any) -> None:
    servicer = EchoBothRunner()
    counting = await in_process(servicer)
    gr = runners(servicer.addr)
    call = lb_call(b"b" * (STREAM_MAX_BODY + 1))
    assert (await gr.try_exec(call)).error is None
    assert counting.methods == Counter({"Call": 1})


async def test_runner_without_calls_is_probed_once(runners: Any, in_process: Any) -> None:
    servicer = EchoBothRunner()
    counting = await in_process(servicer)
    gr = runners(servicer.addr)
    for body in (b"one", b"two"):
        call = lb_call(body)
        attempt = await gr.try_exec(call)
        assert attempt.placed and attempt.error is None
        assert call.response.body() == body  # type: ignore[attr-defined]
    assert not gr.calls and gr.unary
    assert counting.methods == Counter({"Calls": 1, "Call": 2})


async def test_status_features_decide_without_probing(runners: Any, in_process: Any) -> None:
    servicer = StreamOnlyRunner()  # fn-like: its Status lists no features
    counting = await in_process(servicer)
    gr = runners(servicer.addr)
    await gr.refresh()
    assert not gr.calls and not gr.unary
    call = lb_call(b"fn")
    assert (await gr.try_exec(call)).error is None
    assert call.response.body() == b"fn"  # type: ignore[attr-defined]
    assert counting.methods == Counter({"Status": 1, "TryExec": 1})


class _EndsStream(StreamOnlyRunner):
    """Reads one batch, then ends the stream: with OK, or with an error status."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self.code = code
        self.read = asyncio.Event()

    async def Calls(self, request_iterator: Any, context: Any) -> None:
        await context.read()
        self.read.set()
        if self.code != grpc.StatusCode.OK:
            await context.abort(self.code, "runner broke")


async def test_stream_ended_with_ok_means_not_run(runners: Any, in_process: Any) -> None:
    servicer = _EndsStream(grpc.StatusCode.OK)
    await in_process(servicer)
    gr = runners(servicer.addr, unary=False)
    attempt = await gr.try_exec(lb_call(b"q"))
    assert servicer.read.is_set()
    assert not attempt.placed and isinstance(attempt.error, RunnerUnreachable)


async def test_stream_broken_after_send_is_committed(runners: Any, in_process: Any) -> None:
    servicer = _EndsStream(grpc.StatusCode.INTERNAL)
    await in_process(servicer)
    gr = runners(servicer.addr, unary=False)
    attempt = await gr.try_exec(lb_call(b"q"))
    assert attempt.placed and isinstance(attempt.error, RunnerError)
    assert attempt.error.error_code == 502 and "runner broke" in str(attempt.error)


async def test_crash_mid_call_on_the_stream_is_an_error(runners: Any) -> None:
    with stub_proc() as proc:
        gr = runners(proc.addr)
        only_one_path(gr, "Calls")
        attempt = await gr.try_exec(lb_call(config={"crash": "yes"}))
        assert attempt.placed and isinstance(attempt.error, RunnerError)
        assert await asyncio.to_thread(proc.wait) == 3


@pytest.mark.slow
async def test_client_deadline_through_the_lb_cancels_on_the_runner() -> None:
    with stub_proc() as stub, lb([stub.addr]) as front:
        async with lb_stub(front) as lbs:
            assert (await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="echo", body=b"warm"),
                                     timeout=10)).body == b"warm"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lbs.Invoke(lb_pb2.InvokeRequest(
                    fn_id="echo", config={"sleep_ms": "20000"}), timeout=1.0)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.to_thread(stub.wait_for_line, r'msg="call canceled"')
            # The stream goes on serving.
            assert (await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="echo", body=b"again"),
                                     timeout=10)).body == b"again"


class _EchoCalls(StreamOnlyRunner):
    """Serves Calls: echoes every call's body."""

    async def Calls(self, request_iterator: Any, context: Any) -> None:
        async for batch in request_iterator:
            await context.write(runner_pb2.ReplyBatch(replies=[
                runner_pb2.CallReply(seq=r.seq, body=r.body, http=runner_pb2.HttpRespMeta(
                    status_code=200), finished=runner_pb2.CallFinished(success=True))
                for r in batch.calls]))


async def test_a_failing_writer_fails_its_calls_instead_of_hanging(in_process: Any) -> None:
    servicer = _EchoCalls()
    await in_process(servicer)
    async with grpc.aio.insecure_channel(servicer.addr) as ch:
        stream = CallStream(runner_pb2_grpc.RunnerStub(ch))
        ok = await stream.call(req(0, b"fine"))
        assert ok.body == b"fine"
        await stream.close()

        class BrokenWrites:
            """The real stream, but writing raises what no gRPC error explains (a bug)."""

            def __init__(self, rpc: Any) -> None:
                self._rpc = rpc

            def __getattr__(self, name: str) -> Any:
                return getattr(self._rpc, name)

            async def write(self, msg: Any) -> None:
                raise RuntimeError("bug in the writer")

        stub = runner_pb2_grpc.RunnerStub(ch)
        real = stub.Calls
        stub.Calls = lambda: BrokenWrites(real())  # type: ignore[method-assign]
        stream = CallStream(stub)
        with pytest.raises(CallStreamFailed) as e:
            await asyncio.wait_for(stream.call(req(0, b"lost?")), 10)
        # Written as far as we know: it may have run, so the LB will not re-send it.
        assert not e.value.not_run and "writer failed" in str(e.value)
        await stream.close()
