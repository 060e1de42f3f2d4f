"""runner-stub as fn's LB sees it: /RunnerProtocol/* over a generic client (no generated stub).

The messages are built and read with fnlb.v1's classes only because their
field numbers are fn's; the method paths are fn's exact, package-less ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.fn import runner_protocol_pb2 as fn_pb
from fnlb.v1 import runner_pb2 as pb
from runner_stub import StubConfig, StubServer


def _raw(b: bytes) -> bytes:
    return b


def _try(call_id: str, config: dict[str, str] | None = None, *, ack: bool = False) -> bytes:
    model = {"id": call_id, "app_id": "app1", "fn_id": "fn1", "type": "sync",
             "memory": 64, "config": config or {}}
    tc = pb.TryCall(models_call_json=json.dumps(model), slot_hash_id="6162", ack=ack)
    return pb.ClientMsg(**{"try": tc}).SerializeToString()


def _frames(body: bytes, chunk: int = 10 * 1024) -> list[bytes]:
    if not body:
        return [pb.ClientMsg(data=pb.DataFrame(eof=True)).SerializeToString()]
    return [pb.ClientMsg(data=pb.DataFrame(data=body[i:i + chunk],
                                           eof=i + chunk >= len(body))).SerializeToString()
            for i in range(0, len(body), chunk)]


async def _engage(ch: grpc.aio.Channel, msgs: list[bytes]) -> list[pb.RunnerMsg]:
    engage = ch.stream_stream("/RunnerProtocol/Engage", request_serializer=_raw,
                              response_deserializer=_raw)
    return [pb.RunnerMsg.FromString(m) async for m in engage(iter(msgs), timeout=10)]


async def _status(ch: grpc.aio.Channel) -> pb.RunnerStatus:
    status = ch.unary_unary("/RunnerProtocol/Status", request_serializer=_raw,
                            response_deserializer=_raw)
    raw = await status(empty_pb2.Empty().SerializeToString(), timeout=10)
    return pb.RunnerStatus.FromString(raw)


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=1, runner_id="r-fn")) as s:
        yield s


async def test_engage_accepts_runs_and_never_acknowledges(stub: StubServer) -> None:
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        # ack=True is field 30, which fn's LB never sets: Engage ignores it
        # (fn's rule: the try is the commit) where TryExec would send an ack.
        msgs = await _engage(ch, [_try("c-1", ack=True), *_frames(b"hello")])
        kinds = [m.WhichOneof("body") for m in msgs]
        assert kinds == ["result_start", "data", "finished"], kinds
        assert msgs[0].result_start.http.status_code == 200
        assert msgs[1].data.data == b"hello" and msgs[1].data.eof
        fin = msgs[-1].finished
        assert fin.success and fin.details == "c-1" and fin.createdAt and fin.completedAt
        st = await _status(ch)
        assert (st.requestsReceived, st.requestsHandled, st.active) == (1, 1, 0)
        assert st.id == "r-fn"


async def test_engage_nacks_with_fn_503_when_full(stub: StubServer,
                                                  accepted: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        held = asyncio.ensure_future(
            _engage(ch, [_try("c-hold", {"sleep_ms": "2000"}), *_frames(b"")]))
        await asyncio.wait_for(accepted.wait(), 10)  # the only slot is taken
        msgs = await _engage(ch, [_try("c-2"), *_frames(b"x")])
        # fn's LB (runner_client.go) retries elsewhere on exactly this: a
        # finished with errorCode 503 (ErrCallTimeoutServerBusy) and nothing before.
        assert [m.WhichOneof("body") for m in msgs] == ["finished"]
        assert (msgs[0].finished.success, msgs[0].finished.errorCode) == (False, 503)
        assert "too busy" in msgs[0].finished.errorStr
        st = await _status(ch)
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (2, 1, 1)
        assert st.active == 1
        held.cancel()


async def test_engage_streams_a_large_body_both_ways(stub: StubServer) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, sent as fn does: 10 KiB frames
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        msgs = await _engage(ch, [_try("c-big"), *_frames(body)])
    data = [m.data for m in msgs if m.WhichOneof("body") == "data"]
    assert len(data) == 103 and all(len(d.data) <= 10 * 1024 for d in data)
    assert data[-1].eof and not any(d.eof for d in data[:-1])
    assert b"".join(d.data for d in data) == body
    assert msgs[-1].finished.success


async def test_status2_and_configure_runner(stub: StubServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner_stub")
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        status2 = ch.unary_unary("/RunnerProtocol/Status2", request_serializer=_raw,
                                 response_deserializer=pb.RunnerStatus.FromString)
        st = await status2(b"", timeout=10)
        assert st.runner_id == "r-fn" and st.slots_total == 1
        configure = ch.unary_unary("/RunnerProtocol/ConfigureRunner",
                                   request_serializer=fn_pb.ConfigMsg.SerializeToString,
                                   response_deserializer=fn_pb.ConfigStatus.FromString)
        got = await configure(fn_pb.ConfigMsg(config={"k": "v"}), timeout=10)
        assert got == fn_pb.ConfigStatus()
    [logged] = [r for r in caplog.records if r.getMessage().startswith("configure runner")]
    assert logged.__dict__["kv"]["config"] == '{"k": "v"}'


async def test_stream_logs_pulls_one_line_per_ended_call(stub: StubServer) -> None:
    req = fn_pb.LogRequestMsg
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        await _engage(ch, [_try("c-a"), *_frames(b"a")])
        logs = ch.stream_stream("/RunnerProtocol/StreamLogs",
                                request_serializer=req.SerializeToString,
                                response_deserializer=fn_pb.LogResponseMsg.FromString)
        stream = logs(timeout=10)
        await stream.write(req(start=req.Start(config={"who": "test"})))
        await stream.write(req(ready=req.Ready()))
        first = await stream.read()
        [container] = first.data
        assert (container.applicationId, container.functionId) == ("app1", "fn1")
        [request] = container.data
        assert request.requestId == "c-a"
        [line] = request.data
        assert line.source == fn_pb.LogResponseMsg.Container.Request.Line.STDOUT
        assert b"c-a done: status 200" in line.data and line.timestamp > 0
        # The next batch waits for the next call, and holds only that call.
        await stream.write(req(ack=req.Ack()))
        second = asyncio.ensure_future(stream.read())
        await _engage(ch, [_try("c-b", {"fail": "boom"}), *_frames(b"")])
        got = await asyncio.wait_for(second, 10)
        [line] = got.data[0].data[0].data
        assert got.data[0].data[0].requestId == "c-b"
        assert line.source == fn_pb.LogResponseMsg.Container.Request.Line.STDERR
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK


async def test_stream_logs_must_start_with_start(stub: StubServer) -> None:
    req = fn_pb.LogRequestMsg
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        logs = ch.stream_stream("/RunnerProtocol/StreamLogs",
                                request_serializer=req.SerializeToString,
                                response_deserializer=fn_pb.LogResponseMsg.FromString)
        stream = logs(iter([req(ack=req.Ack())]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
