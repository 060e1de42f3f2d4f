"""Acknowledgements ("ack"), the accept deadline, keepalive and "does not fit".

The stub's side on a real in-process StubServer (raw RunnerStub calls); the
LB's side (GrpcRunner) against the stub and against scripted in-process
runners that do exactly one wrong thing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

import runner_stub.server as stub_server
from fnlb.calls import LBCall
from fnlb.errors import DoesNotFit, RunnerError, RunnerUnreachable
from fnlb.harness import wait_until
from fnlb.runnerpool import CallModel
from fnlb.transport import CHUNK_SIZE, KEEPALIVE_OPTIONS, STREAM_MAX_BODY, GrpcRunner
from fnlb.transport._accept import AcceptWatch
from fnlb.v1 import runner_pb2 as pb
from fnlb.v1 import runner_pb2_grpc
from runner_stub import StubConfig, StubServer
from tests.inproc import StreamOnlyRunner

MakeRunner = Callable[..., GrpcRunner]


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=4, memory_mb=1024)) as s:
        yield s


@pytest.fixture
async def raw(stub: StubServer) -> AsyncIterator[runner_pb2_grpc.RunnerStub]:
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        yield runner_pb2_grpc.RunnerStub(ch)


def call_json(call_id: str = "c1", **config: str) -> str:
    return json.dumps({"id": call_id, "fn_id": "f", "config": config})


def try_msg(call_id: str = "c1", *, ack: bool = True, memory: int = 0,
            **config: str) -> pb.ClientMsg:
    text = json.dumps({"id": call_id, "fn_id": "f", "memory": memory, "config": config})
    return pb.ClientMsg(**{"try": pb.TryCall(models_call_json=text, ack=ack)})


def body_msg(data: bytes = b"hi") -> pb.ClientMsg:
    return pb.ClientMsg(data=pb.DataFrame(data=data, eof=True))


def calls_req(seq: int, *, ack: bool = True, body: bytes = b"hi",
              memory: int = 0, **config: str) -> pb.CallRequest:
    text = json.dumps({"id": f"s{seq}", "fn_id": "f", "memory": memory, "config": config})
    return pb.CallRequest(**{"try": pb.TryCall(models_call_json=text, ack=ack)},
                          body=body, seq=seq)


def lb_call(body: bytes = b"hello", call_type: str = "sync", memory: int = 128,
            **config: str) -> LBCall:
    return LBCall(CallModel(id=uuid.uuid4().hex, fn_id="echo", type=call_type,
                            memory=memory, config=config), body)


async def kinds(rpc: Any) -> list[str]:
    """The kinds of the messages left on a TryExec stream read with ``read()``."""
    out = []
    while (msg := await rpc.read()) is not grpc.aio.EOF:
        out.append(msg.WhichOneof("body"))
    return out


async def counters(runner: runner_pb2_grpc.RunnerStub) -> dict[str, int]:
    st = await runner.Status(empty_pb2.Empty(), timeout=10)
    return {"active": st.active, **{k: int(v) for k, v in st.customStatus.items()}}


# -- the stub -----------------------------------------------------------------


async def test_stub_lists_ack_and_keepalive(raw: Any) -> None:
    st = await raw.Status(empty_pb2.Empty(), timeout=10)
    assert {"ack", "keepalive", "call", "calls"} <= set(st.features)
    async with StubServer(StubConfig(listen="127.0.0.1:0", ack=False)) as fn_like, \
            grpc.aio.insecure_channel(fn_like.addr) as ch:
        st = await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=10)
        assert "ack" not in st.features and "keepalive" in st.features


async def test_stub_acks_first_and_starts_only_after_the_go(raw: Any) -> None:
    rpc = raw.TryExec(timeout=20)
    await rpc.write(try_msg())
    first = await rpc.read()
    assert first.WhichOneof("body") == "ack"
    # A slot is taken, the function not started: it waits for the go (the body).
    assert (await counters(raw))["active"] == 1
    assert (await counters(raw))["started"] == 0
    await rpc.write(body_msg(b"go"))
    await rpc.done_writing()
    assert await kinds(rpc) == ["result_start", "data", "finished"]
    assert (await counters(raw))["started"] == 1


async def test_stub_sends_no_ack_unless_the_try_asks(raw: Any) -> None:
    # fn's LB never asks: it sees fn's messages only.
    msgs = [m async for m in raw.TryExec(iter([try_msg(ack=False), body_msg()]), timeout=20)]
    assert [m.WhichOneof("body") for m in msgs] == ["result_start", "data", "finished"]


async def test_stub_with_ack_off_ignores_the_ask() -> None:
    async with StubServer(StubConfig(listen="127.0.0.1:0", ack=False)) as fn_like, \
            grpc.aio.insecure_channel(fn_like.addr) as ch:
        runner = runner_pb2_grpc.RunnerStub(ch)
        msgs = [m async for m in runner.TryExec(iter([try_msg(), body_msg()]), timeout=20)]
        assert [m.WhichOneof("body") for m in msgs] == ["result_start", "data", "finished"]


async def test_acked_call_cancelled_before_the_go_never_starts(raw: Any) -> None:
    rpc = raw.TryExec(timeout=20)
    await rpc.write(try_msg())
    assert (await rpc.read()).WhichOneof("body") == "ack"
    rpc.cancel()
    await wait_until(lambda: _settled(raw), within=10, what="the call canceled")
    c = await counters(raw)
    assert (c["started"], c["canceled"]) == (0, 1)


async def _settled(raw: Any) -> bool:
    c = await counters(raw)
    return c["active"] == 0 and c["canceled"] >= 1


async def test_try_cancelled_while_waiting_for_a_slot_is_never_acked(stub: StubServer) -> None:
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=1, nack_after_ms=20_000)) as s, \
            grpc.aio.insecure_channel(s.addr) as ch:
        raw = runner_pb2_grpc.RunnerStub(ch)
        busy = raw.TryExec(timeout=30)
        await busy.write(try_msg("busy", sleep_ms="60000"))
        assert (await busy.read()).WhichOneof("body") == "ack"
        await busy.write(body_msg())
        await wait_until(lambda: _count(raw, "started", 1), within=10, what="busy started")
        waiting = raw.TryExec(timeout=30)
        await waiting.write(try_msg("waiting"))
        await wait_until(lambda: _count(raw, "waiting", 1), within=10, what="queued")
        waiting.cancel()
        await wait_until(lambda: _count(raw, "waiting", 0), within=10, what="left the queue")
        busy.cancel()  # frees the slot the cancelled try waited for
        await wait_until(lambda: _count(raw, "active", 0), within=10, what="idle")
        c = await counters(raw)
        assert (c["started"], c["canceled"]) == (1, 2)
        assert s.service.counters.handled == 1  # the cancelled try never took the slot


async def _count(raw: Any, name: str, value: int) -> bool:
    return (await counters(raw))[name] == value


async def test_a_go_that_never_comes_drops_the_call(raw: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stub_server, "_GO_WAIT_S", 0.2)
    rpc = raw.TryExec(timeout=20)
    await rpc.write(try_msg())
    assert (await rpc.read()).WhichOneof("body") == "ack"
    fin = (await rpc.read()).finished
    assert (fin.success, fin.errorCode) == (False, 500) and "no go" in fin.errorStr
    assert (await counters(raw))["started"] == 0
    rpc.cancel()


async def test_calls_stream_acks_then_waits_for_each_go(raw: Any) -> None:
    rpc = raw.Calls(timeout=20)
    await rpc.write(pb.CallBatch(calls=[calls_req(1), calls_req(2), calls_req(3, ack=False)]))
    acks: list[int] = []
    replies: dict[int, pb.CallReply] = {}
    while len(acks) < 2 or 3 not in replies:  # a call that did not ask runs as before
        batch = await rpc.read()
        acks.extend(batch.acks)
        replies.update({r.seq: r for r in batch.replies})
    assert sorted(acks) == [1, 2] and set(replies) == {3}
    assert (await counters(raw))["started"] == 1
    await rpc.write(pb.CallBatch(go=[1], cancel=[2]))
    batch = await rpc.read()
    assert [r.seq for r in batch.replies] == [1] and batch.replies[0].body == b"hi"
    # Acked, and the stream ends before its go: dropped unanswered, never run.
    await rpc.write(pb.CallBatch(calls=[calls_req(4)]))
    assert list((await rpc.read()).acks) == [4]
    await rpc.done_writing()
    assert await rpc.read() is grpc.aio.EOF
    assert await rpc.code() == grpc.StatusCode.OK
    assert (await counters(raw))["started"] == 2


async def test_stub_says_does_not_fit_on_every_path(raw: Any) -> None:
    msgs = [m async for m in raw.TryExec(iter([try_msg(memory=2048), body_msg()]), timeout=20)]
    assert [m.WhichOneof("body") for m in msgs] == ["finished"]
    reply = await raw.Call(calls_req(0, ack=False, memory=2048), timeout=20)
    rpc = raw.Calls(timeout=20)
    await rpc.write(pb.CallBatch(calls=[calls_req(7, memory=2048)]))
    batch = await rpc.read()
    await rpc.done_writing()
    for fin in (msgs[0].finished, reply.finished, batch.replies[0].finished):
        assert (fin.success, fin.errorCode, fin.memory_mb_total) == (False, 507, 1024)
        assert "2048 MiB" in fin.errorStr
    assert not reply.HasField("http") and list(batch.acks) == []


@pytest.mark.slow
async def test_stub_permits_keepalive_pings_every_second(stub: StubServer) -> None:
    # gRPC's default server policy answers the third such ping without a call
    # with GOAWAY "too_many_pings": the connection drops (READY -> IDLE) and
    # the client slows its pings down.
    async with grpc.aio.insecure_channel(stub.addr, options=list(KEEPALIVE_OPTIONS)) as ch:
        await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=10)
        assert ch.get_state() == grpc.ChannelConnectivity.READY
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ch.wait_for_state_change(grpc.ChannelConnectivity.READY),
                                   3.5)


# -- the LB: GrpcRunner -------------------------------------------------------


async def test_refresh_negotiates_ack_and_keepalive(stub: StubServer,
                                                    make_runner: MakeRunner) -> None:
    gr = make_runner(stub.addr)
    assert not gr.acks and not gr.keepalive  # until a Status says so
    await gr.refresh()
    assert gr.acks and gr.keepalive
    await gr.refresh()  # no change, no re-dial
    assert gr.keepalive
    off = make_runner(stub.addr, ack=False)
    await off.refresh()
    assert not off.acks and off.keepalive


@pytest.mark.parametrize(("path", "body", "call_type"), [
    ("Calls", b"small", "sync"),
    ("TryExec", b"m" * (STREAM_MAX_BODY + 1), "sync"),  # no Call with ack runners
    ("TryExec", b"b" * (3 * CHUNK_SIZE + 5), "sync"),  # the go streamed by a task
    ("TryExec", b"d", "detached"),
])
async def test_ack_runner_serves_every_path(stub: StubServer, make_runner: MakeRunner,
                                            path: str, body: bytes, call_type: str) -> None:
    gr = make_runner(stub.addr)
    await gr.refresh()
    used: list[str] = []
    for name in ("Calls", "Call", "TryExec"):
        original = getattr(gr._stub, name)

        def spy(*a: Any, _name: str = name, _orig: Any = original, **kw: Any) -> Any:
            used.append(_name)
            return _orig(*a, **kw)

        setattr(gr._stub, name, spy)
    call = lb_call(body, call_type)
    attempt = await gr.try_exec(call)
    assert attempt.placed and attempt.error is None, attempt
    assert set(used) <= {path} and (used or path == "Calls")
    if call_type == "sync":
        assert call.response.body() == body  # type: ignore[attr-defined]
    else:
        await wait_until(lambda: stub.service.counters.started == 1, within=10)
    assert stub.service.counters.started == 1


@pytest.mark.parametrize("path", ["Calls", "Call", "TryExec"])
async def test_does_not_fit_is_not_placed(stub: StubServer, make_runner: MakeRunner,
                                          path: str) -> None:
    gr = make_runner(stub.addr, unary=path == "Call", calls=path == "Calls")
    if path != "Call":
        await gr.refresh()  # Calls and TryExec with acks
    attempt = await gr.try_exec(lb_call(memory=2048))
    assert not attempt.placed and isinstance(attempt.error, DoesNotFit)
    assert attempt.error.memory_mb_total == 1024 and attempt.error.runner == stub.addr
    assert "2048 MiB" in str(attempt.error)


class Scripted(StreamOnlyRunner):
    """Lists "ack" (and nothing else: TryExec only); ``mode`` says how it misbehaves.

    silent: reads the try, answers nothing. broken: fails before the ack.
    lost: acks, reads the go, then the stream breaks (UNAVAILABLE).
    """

    def __init__(self, mode: str, features: tuple[str, ...] = ("ack",)) -> None:
        super().__init__()
        self.mode = mode
        self.features = features
        self.tries: list[pb.TryCall] = []
        self.data_frames = 0
        self.cancelled = asyncio.Event()

    async def Status(self, request: Any, context: Any) -> pb.RunnerStatus:
        st = await super().Status(request, context)
        st.features.extend(self.features)
        return st

    async def TryExec(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        first = await context.read()
        self.tries.append(getattr(first, "try"))
        try:
            if self.mode == "silent":
                while await context.read() is not grpc.aio.EOF:
                    self.data_frames += 1
                await asyncio.Event().wait()
            if self.mode == "broken":
                await context.abort(grpc.StatusCode.INTERNAL, "runner broke")
            await context.write(pb.RunnerMsg(ack=pb.CallAck()))
            await context.read()
            self.data_frames += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_ack_runner_that_does_not_answer_is_cancelled_and_not_placed(
        in_process: Any, make_runner: MakeRunner) -> None:
    servicer = Scripted("silent")
    await in_process(servicer)
    gr = make_runner(servicer.addr, accept_timeout=0.2)
    await gr.refresh()
    heard: list[str] = []
    gr.on_unanswered = heard.append
    attempt = await asyncio.wait_for(gr.try_exec(lb_call(b"x")), 10)
    assert not attempt.placed and isinstance(attempt.error, RunnerUnreachable)
    assert str(attempt.error) == f"runner {servicer.addr}: no answer to the try within 0.2s"
    await asyncio.wait_for(servicer.cancelled.wait(), 10)
    # Asked for an ack, got no go: it cannot have started the call.
    assert servicer.tries[0].ack and servicer.data_frames == 0
    assert heard == []  # the attempt itself says so


async def test_ack_runner_failing_before_the_ack_is_not_placed(
        in_process: Any, make_runner: MakeRunner) -> None:
    servicer = Scripted("broken")
    await in_process(servicer)
    gr = make_runner(servicer.addr)
    await gr.refresh()
    attempt = await asyncio.wait_for(gr.try_exec(lb_call(b"x")), 10)
    assert not attempt.placed and isinstance(attempt.error, RunnerUnreachable)
    assert "before it acknowledged" in str(attempt.error) and "runner broke" in str(attempt.error)
    assert servicer.data_frames == 0


async def test_ack_runner_lost_after_the_ack_is_committed_and_lost(
        in_process: Any, make_runner: MakeRunner) -> None:
    servicer = Scripted("lost")
    await in_process(servicer)
    gr = make_runner(servicer.addr)
    await gr.refresh()
    attempt = await asyncio.wait_for(gr.try_exec(lb_call(b"x")), 10)
    assert attempt.placed and isinstance(attempt.error, RunnerError)
    assert attempt.error.lost and servicer.data_frames == 1


async def test_runner_without_ack_keeps_fns_rule(in_process: Any,
                                                 make_runner: MakeRunner) -> None:
    servicer = Scripted("broken", features=())
    await in_process(servicer)
    gr = make_runner(servicer.addr)
    await gr.refresh()
    attempt = await asyncio.wait_for(gr.try_exec(lb_call(b"x")), 10)
    assert not servicer.tries[0].ack
    assert attempt.placed and isinstance(attempt.error, RunnerError)
    assert not attempt.error.lost  # the runner said so; the connection was fine


class SlowStart(StreamOnlyRunner):
    """fn-like (no features): answers a try only once ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def TryExec(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        while (await context.read()).WhichOneof("body") != "data":
            pass
        await self.go.wait()
        await context.write(pb.RunnerMsg(finished=pb.CallFinished(success=True)))


class SlowStartStuckStatus(SlowStart):
    """As SlowStart, but its Status hangs too (a stuck runner, not a slow function)."""

    async def Status(self, request: Any, context: Any) -> pb.RunnerStatus:  # type: ignore[override]
        if self.tries_seen:
            await asyncio.Event().wait()
        return await super().Status(request, context)

    async def TryExec(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        self.tries_seen = True
        await super().TryExec(request_iterator, context)

    tries_seen = False


async def test_a_slow_function_on_a_runner_without_ack_is_not_reported(
        in_process: Any, make_runner: MakeRunner) -> None:
    # fn's runners send nothing before the response starts: a long function is
    # silence, but the runner still answers a Status, so it is not stuck.
    servicer = SlowStart()
    await in_process(servicer)
    gr = make_runner(servicer.addr, accept_timeout=0.1)
    await gr.refresh()
    reasons: list[str] = []
    gr.on_unanswered = reasons.append
    attempt = asyncio.create_task(gr.try_exec(lb_call(b"x")))
    heard = gr._watch.last_heard
    await wait_until(lambda: gr._watch.last_heard > heard and not gr._checking, 10,
                     "the status that checked the silence")
    servicer.go.set()
    result = await attempt
    assert result.placed and result.error is None and reasons == []


async def test_unanswered_try_of_a_runner_without_ack_goes_on_and_is_reported(
        in_process: Any, make_runner: MakeRunner) -> None:
    servicer = SlowStartStuckStatus()
    await in_process(servicer)
    gr = make_runner(servicer.addr, accept_timeout=0.1)
    await gr.refresh()
    reported = asyncio.Event()
    reasons: list[str] = []

    def on_unanswered(reason: str) -> None:
        reasons.append(reason)
        reported.set()

    gr.on_unanswered = on_unanswered
    attempt = asyncio.create_task(gr.try_exec(lb_call(b"x")))
    await asyncio.wait_for(reported.wait(), 10)
    assert not attempt.done()  # fn's rule: sent is committed; it goes on
    servicer.go.set()
    result = await attempt
    assert result.placed and result.error is None
    assert reasons == [f"runner {servicer.addr}: no answer to the try within 0.1s"]


async def test_a_prompt_answer_reports_nothing(stub: StubServer,
                                               make_runner: MakeRunner) -> None:
    gr = make_runner(stub.addr, accept_timeout=0.05, ack=False)
    reasons: list[str] = []
    gr.on_unanswered = reasons.append
    for path in ("calls", "call", "tryexec"):
        gr._calls, gr._unary = path == "calls", path == "call"
        assert (await gr.try_exec(lb_call(b"x"))).error is None
    await asyncio.sleep(0.1)  # past every deadline: the timers were cancelled
    assert reasons == []


def test_accept_watch_reports_only_a_silent_runner() -> None:
    reasons: list[str] = []
    watch = AcceptWatch("r:1", 1.0, reasons.append)
    watch.unanswered(sent_at=0.0)
    assert reasons == ["runner r:1: no answer to the try within 1s"]
    watch.heard()  # heard since: alive, only that call is slow
    watch.unanswered(sent_at=watch.last_heard - 1)
    assert len(reasons) == 1
    assert AcceptWatch("r:1", None, reasons.append).timeout is None
    assert AcceptWatch("r:1", 0, reasons.append).timeout is None


class SilentCalls(StreamOnlyRunner):
    """Serves Calls and lists "calls" and "ack", but never acks or answers."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[pb.CallBatch] = []
        self.got = asyncio.Event()

    async def Status(self, request: Any, context: Any) -> pb.RunnerStatus:
        st = await super().Status(request, context)
        st.features.extend(("calls", "ack"))
        return st

    async def Calls(self, request_iterator: Any, context: Any) -> None:
        async for batch in request_iterator:
            self.batches.append(batch)
            self.got.set()


async def test_calls_stream_unacked_call_is_cancelled_and_not_placed(
        in_process: Any, make_runner: MakeRunner) -> None:
    servicer = SilentCalls()
    await in_process(servicer)
    gr = make_runner(servicer.addr, accept_timeout=0.2)
    await gr.refresh()
    attempt = await asyncio.wait_for(gr.try_exec(lb_call(b"x")), 10)
    assert not attempt.placed and isinstance(attempt.error, RunnerUnreachable)
    assert "no answer to the try within 0.2s" in str(attempt.error)
    await wait_until(lambda: any(b.cancel for b in servicer.batches), within=10,
                     what="the cancel")
    seq = servicer.batches[0].calls[0].seq
    assert getattr(servicer.batches[0].calls[0], "try").ack
    assert [list(b.cancel) for b in servicer.batches[1:]] == [[seq]]
    assert not any(b.go for b in servicer.batches)
