"""End to end: ``python -m runner_stub`` as a real process, driven over grpc.aio.

Synchronisation is by responses and log lines (the stub logs ``msg="call
accepted" call_id=...`` at debug level), never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fnlb import harness
from fnlb.timefmt import parse_rfc3339
from fnlb.v1 import runner_pb2 as pb
from fnlb.v1 import runner_pb2_grpc

MiB = 1024 * 1024
CHUNK = 10 * 1024
MAX_BODY = 5 * MiB
STUB = "runner_stub"


# -- helpers ----------------------------------------------------------------

def new_call(fn_id: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "fn_id": fn_id, "app_id": "app", "type": "sync",
            "image": "fake/" + fn_id, **fields}


def try_msg(call: dict[str, Any] | str, slot_hash_id: str = "") -> pb.ClientMsg:
    text = call if isinstance(call, str) else json.dumps(call)
    return pb.ClientMsg(**{"try": pb.TryCall(models_call_json=text, slot_hash_id=slot_hash_id)})


def data_msgs(body: bytes) -> list[pb.ClientMsg]:
    if not body:
        return [pb.ClientMsg(data=pb.DataFrame(eof=True))]
    return [pb.ClientMsg(data=pb.DataFrame(data=body[i:i + CHUNK], eof=i + CHUNK >= len(body)))
            for i in range(0, len(body), CHUNK)]


@dataclass
class Outcome:
    msgs: list[pb.RunnerMsg]

    @property
    def kinds(self) -> list[str]:
        return [m.WhichOneof("body") for m in self.msgs]

    @property
    def nacked(self) -> bool:
        return self.kinds == ["finished"] and self.finished.errorCode == 503

    @property
    def status(self) -> int:
        assert self.kinds[0] == "result_start", self.kinds
        return self.msgs[0].result_start.http.status_code

    @property
    def headers(self) -> dict[str, str]:
        return {h.key: h.value for h in self.msgs[0].result_start.http.headers}

    @property
    def frames(self) -> list[pb.DataFrame]:
        return [m.data for m in self.msgs if m.WhichOneof("body") == "data"]

    @property
    def body(self) -> bytes:
        return b"".join(f.data for f in self.frames)

    @property
    def finished(self) -> pb.CallFinished:
        assert self.kinds[-1] == "finished", self.kinds
        return self.msgs[-1].finished

    def assert_ok(self) -> None:
        kinds = self.kinds
        assert kinds[0] == "result_start" and kinds[-1] == "finished", kinds
        assert set(kinds[1:-1]) == {"data"}, kinds
        frames = self.frames
        assert frames[-1].eof and not any(f.eof for f in frames[:-1])
        assert self.finished.success, self.finished


async def exec_call(runner: runner_pb2_grpc.RunnerStub, call: dict[str, Any], body: bytes = b"",
                    *, slot_hash_id: str = "") -> Outcome:
    stream = runner.TryExec(iter([try_msg(call, slot_hash_id), *data_msgs(body)]), timeout=30)
    return Outcome([m async for m in stream])


async def rpc_error(runner: runner_pb2_grpc.RunnerStub,
                    msgs: Iterable[pb.ClientMsg]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in runner.TryExec(iter(list(msgs)), timeout=30):
            pass
    return info.value


async def status(runner: runner_pb2_grpc.RunnerStub) -> pb.RunnerStatus:
    return await runner.Status(empty_pb2.Empty(), timeout=10)


async def wait_line(proc: harness.Proc, pattern: str, start: int = 0) -> str:
    return await asyncio.to_thread(proc.wait_for_line, pattern, 20.0, start)


async def accepted(proc: harness.Proc, call: dict[str, Any]) -> None:
    await wait_line(proc, rf'msg="call accepted" call_id={call["id"]}')


async def running(proc: harness.Proc, call: dict[str, Any]) -> None:
    """Wait until the call's function runs (body read, cold start done)."""
    await wait_line(proc, rf'msg="function started" call_id={call["id"]}')


def ms_between(a: str, b: str) -> float:
    ta, tb = parse_rfc3339(a), parse_rfc3339(b)
    assert ta is not None and tb is not None, (a, b)
    return (tb - ta).total_seconds() * 1000


@pytest.fixture(scope="module")
def stub() -> Iterator[harness.Proc]:
    """One shared stub for tests that leave it as they found it (counters compared as deltas)."""
    with harness.running(STUB, ["--listen", "127.0.0.1:0", "--max-body-bytes", str(MAX_BODY),
                              "--log-level", "debug"]) as p:
        yield p


def run_stub(*args: str) -> Any:
    return harness.running(STUB, ["--listen", "127.0.0.1:0", "--log-level", "debug", *args])


def custom(st: pb.RunnerStatus, key: str) -> int:
    return int(st.customStatus[key])


# -- the happy path -----------------------------------------------------------

async def test_echo(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    call = new_call(headers={"Content-Type": ["text/plain"]})
    out = await exec_call(runner, call, b"hello runner")
    out.assert_ok()
    assert out.status == 200 and out.body == b"hello runner"
    assert out.headers == {"x-runner-id": stub.addr, "content-type": "text/plain"}
    fin = out.finished
    assert fin.details == call["id"] and fin.image == "fake/echo"
    assert ms_between(fin.createdAt, fin.startedAt) >= 0
    assert ms_between(fin.startedAt, fin.completedAt) >= 0
    assert fin.schedulerDuration >= 0 and fin.executionDuration > 0


async def test_empty_body_is_one_eof_frame(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    out = await exec_call(runner, new_call())
    out.assert_ok()
    assert out.kinds == ["result_start", "data", "finished"]
    assert out.frames[0] == pb.DataFrame(eof=True)


async def test_five_mib_round_trip_in_10k_frames(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    body = bytes(range(256)) * (MAX_BODY // 256)
    assert len(data_msgs(body)) == 512
    out = await exec_call(runner, new_call(), body)
    out.assert_ok()
    assert out.body == body
    assert len(out.frames) == 512 and all(len(f.data) == CHUNK for f in out.frames)


async def test_config_sleep_ms_holds_the_call(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    out = await exec_call(runner, new_call(config={"sleep_ms": "300"}))
    out.assert_ok()
    assert out.finished.executionDuration >= 300e6
    assert ms_between(out.finished.startedAt, out.finished.completedAt) >= 300


async def test_config_status_and_response_size(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    out = await exec_call(runner, new_call(config={"status": "404"}), b"gone")
    out.assert_ok()  # a function answering 404 is still a successful call
    assert out.status == 404 and out.body == b"gone"
    out = await exec_call(runner, new_call(config={"response_size": "25000"}), b"ignored")
    out.assert_ok()
    assert out.body == b"x" * 25000
    assert [len(f.data) for f in out.frames] == [CHUNK, CHUNK, 25000 - 2 * CHUNK]
    assert out.headers["content-type"] == "application/octet-stream"


async def test_config_fail_sends_only_a_finished_error(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    before = await status(runner)
    out = await exec_call(runner, new_call(config={"fail": "boom"}))
    assert out.kinds == ["finished"]
    fin = out.finished
    assert (fin.success, fin.errorCode, fin.errorStr, fin.errorUser) == (False, 502, "boom", True)
    after = await status(runner)
    assert custom(after, "failed") == custom(before, "failed") + 1
    assert after.requestsHandled == before.requestsHandled + 1


async def test_detached_call_is_acknowledged_with_202_before_it_runs(
        stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    stream = runner.TryExec(iter([try_msg(new_call(type="detached", config={"sleep_ms": "200"})),
                                  *data_msgs(b"later")]), timeout=30)
    first = await stream.read()
    assert first.result_start.http.status_code == 202
    t0 = time.monotonic()
    rest = []
    while (msg := await stream.read()) is not grpc.aio.EOF:
        rest.append(msg)
    assert time.monotonic() - t0 >= 0.15  # finished only once the function ran
    assert [m.WhichOneof("body") for m in rest] == ["data", "finished"]
    assert rest[0].data == pb.DataFrame(eof=True) and rest[1].finished.success


async def test_call_timeout_stops_the_function_with_504(stub: harness.Proc,
                                                        channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    out = await exec_call(runner, new_call(timeout=0.2, config={"sleep_ms": "30000"}))
    assert out.kinds == ["finished"]
    fin = out.finished
    assert (fin.success, fin.errorCode, fin.errorStr, fin.errorUser) == (
        False, 504, "Timed out", True)
    # Not before the 0.2 s timeout; generous after: only tells it from the 30 s sleep.
    assert 200 <= ms_between(fin.startedAt, fin.completedAt) < 20000


async def test_health_and_reflection(stub: harness.Proc) -> None:
    async with grpc.aio.insecure_channel(stub.addr) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "fnlb.v1.Runner"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names: set[str] = set()
        async for resp in refl.ServerReflectionInfo(iter([req]), timeout=10):
            names |= {s.name for s in resp.list_services_response.service}
    assert {"fnlb.v1.Runner", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


# -- bad input: a clear error, and the runner keeps serving ------------------

BAD_STREAMS = {
    "first message data": ([pb.ClientMsg(data=pb.DataFrame(data=b"x", eof=True))],
                           "first message must be try, got data"),
    "data before try": ([pb.ClientMsg(data=pb.DataFrame(data=b"x")), try_msg(new_call()),
                         pb.ClientMsg(data=pb.DataFrame(eof=True))],
                        "first message must be try, got data"),
    "no message at all": ([], "first message must be try, got end of stream"),
    "unparseable JSON": ([try_msg("{not json"), *data_msgs(b"")],
                         "models_call_json: invalid JSON"),
    "JSON not an object": ([try_msg("[1, 2]"), *data_msgs(b"")],
                           "models_call_json: must be a JSON object, got list"),
    "bad config value": ([try_msg(new_call(config={"sleep_ms": "soon"})), *data_msgs(b"")],
                         "models_call_json: config.sleep_ms must be an integer"),
    "second try": ([try_msg(new_call()), try_msg(new_call()), *data_msgs(b"")],
                   "second try on one stream"),
    "no eof": ([try_msg(new_call()), pb.ClientMsg(data=pb.DataFrame(data=b"x"))],
               "expected data frames ending with eof, got end of stream"),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
async def test_protocol_errors_are_invalid_argument(stub: harness.Proc, channel_to: Any,
                                                    case: str) -> None:
    runner = channel_to(stub.addr)
    msgs, message = BAD_STREAMS[case]
    before = await status(runner)
    err = await rpc_error(runner, msgs)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.details() or "")
    after = await status(runner)
    assert custom(after, "bad_requests") == custom(before, "bad_requests") + 1
    (await exec_call(runner, new_call(), b"still here")).assert_ok()
    assert (after.active, after.slots_free) == (0, after.slots_total)


async def test_body_over_max_body_bytes_is_a_413(stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    out = await exec_call(runner, new_call(), b"y" * (MAX_BODY + 1))
    assert out.kinds == ["finished"]
    fin = out.finished
    assert (fin.success, fin.errorCode) == (False, 413)
    assert fin.errorStr == f"request body exceeds {MAX_BODY} bytes"
    (await exec_call(runner, new_call(), b"still here")).assert_ok()


async def test_memory_over_total_does_not_fit_not_nacked(stub: harness.Proc,
                                                         channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    before = await status(runner)
    out = await exec_call(runner, new_call(memory=2048), b"big")
    assert out.kinds == ["finished"]
    fin = out.finished
    # "Can never run here; try another runner", with the number the LB can use.
    assert (fin.success, fin.errorCode, fin.memory_mb_total) == (False, 507, 1024)
    assert "2048 MiB" in fin.errorStr and "1024 MiB" in fin.errorStr
    after = await status(runner)
    assert after.requestsNacked == before.requestsNacked
    assert custom(after, "bad_requests") == custom(before, "bad_requests") + 1
    (await exec_call(runner, new_call(memory=1024), b"fits")).assert_ok()


async def test_client_cancel_stops_the_function_and_frees_the_slot(
        stub: harness.Proc, channel_to: Any) -> None:
    runner = channel_to(stub.addr)
    before = await status(runner)
    call = new_call(config={"sleep_ms": "60000"})
    stream = runner.TryExec(iter([try_msg(call), *data_msgs(b"")]), timeout=60)
    await running(stub, call)
    stream.cancel()
    await wait_line(stub, rf'msg="call canceled" call_id={call["id"]}')
    after = await status(runner)
    assert custom(after, "canceled") == custom(before, "canceled") + 1
    assert after.active == 0 and after.slots_free == after.slots_total
    assert after.memory_mb_free == after.memory_mb_total


# -- capacity, warm cache, drain ---------------------------------------------

async def test_concurrency_beyond_slots_is_nacked(channel_to: Any) -> None:
    with run_stub("--slots", "2", "--nack-after-ms", "10") as proc:
        runner = channel_to(proc.addr)
        holders = [new_call(config={"sleep_ms": "1500"}) for _ in range(2)]
        held = [asyncio.create_task(exec_call(runner, c)) for c in holders]
        for c in holders:
            await running(proc, c)
        nacks = await asyncio.gather(*(exec_call(runner, new_call()) for _ in range(4)))
        for o in nacks:
            assert o.nacked, o.kinds  # finished{503} and nothing else
            assert o.finished.errorStr == "Timed out - server too busy"
            assert not o.finished.success
        for task in held:
            (await task).assert_ok()
        st = await status(runner)
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (6, 2, 4)
        assert st.requestsReceived == st.requestsHandled + st.requestsNacked


async def test_cold_then_warm_and_lru_eviction(channel_to: Any) -> None:
    with run_stub("--cold-start-ms", "200", "--warm-cache", "1") as proc:
        runner = channel_to(proc.addr)

        async def sched_ms(fn_id: str, slot: str = "") -> float:
            out = await exec_call(runner, new_call(fn_id), slot_hash_id=slot)
            out.assert_ok()
            return ms_between(out.finished.createdAt, out.finished.startedAt)

        assert await sched_ms("a") >= 200  # cold
        assert await sched_ms("a") < 150  # warm
        assert (await status(runner)).warm_slots == ["a"]
        assert await sched_ms("b", slot="b0b0") >= 200  # cold; evicts a (cache of 1)
        assert (await status(runner)).warm_slots == ["b0b0"]
        assert await sched_ms("a") >= 200  # cold again
        st = await status(runner)
        assert (custom(st, "cold_starts"), custom(st, "warm_hits")) == (3, 1)


async def test_close_drains_inflight_and_nacks_new_calls(channel_to: Any) -> None:
    with run_stub("--slots", "2") as proc:
        runner = channel_to(proc.addr)
        call = new_call(config={"sleep_ms": "1500"})
        inflight = asyncio.create_task(exec_call(runner, call))
        await accepted(proc, call)
        resp = await runner.Close(pb.CloseRequest(wait=False), timeout=10)
        assert (resp.active, resp.drained) == (1, False)
        assert (await exec_call(runner, new_call())).nacked
        st = await status(runner)
        assert (st.draining, st.drained, st.active) == (True, False, 1)
        async with grpc.aio.insecure_channel(proc.addr) as ch:
            check = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="fnlb.v1.Runner"), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        resp = await runner.Close(pb.CloseRequest(wait=True), timeout=20)
        assert (resp.active, resp.drained) == (0, True)
        (await inflight).assert_ok()
        st = await status(runner)
        assert (st.draining, st.drained, st.active) == (True, True, 0)
        assert (st.requestsReceived, st.requestsHandled, st.requestsNacked) == (2, 1, 1)


async def test_sigterm_lets_the_inflight_call_finish_and_exits_0(channel_to: Any) -> None:
    with run_stub() as proc:
        runner = channel_to(proc.addr)
        call = new_call(config={"sleep_ms": "1500"})
        inflight = asyncio.create_task(exec_call(runner, call))
        await accepted(proc, call)
        proc.signal(signal.SIGTERM)
        await wait_line(proc, r"msg=draining")
        assert (await exec_call(runner, new_call())).nacked
        (await inflight).assert_ok()
        assert await asyncio.to_thread(proc.wait) == 0
        await wait_line(proc, r"msg=exiting")


async def test_drain_grace_bounds_the_wait_for_inflight_calls(channel_to: Any) -> None:
    with run_stub("--drain-grace", "300ms") as proc:
        runner = channel_to(proc.addr)
        call = new_call(config={"sleep_ms": "60000"})
        inflight = asyncio.create_task(exec_call(runner, call))
        await running(proc, call)
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait) == 0
        # The 300 ms grace was waited; generous after: only catches waiting out the call.
        assert 0.25 <= time.monotonic() - t0 < 30
        await wait_line(proc, rf'msg="call canceled" call_id={call["id"]}')
        with pytest.raises(grpc.aio.AioRpcError):
            await inflight


async def test_second_signal_exits_at_once(channel_to: Any) -> None:
    with run_stub() as proc:
        runner = channel_to(proc.addr)
        call = new_call(config={"sleep_ms": "60000"})
        inflight = asyncio.create_task(exec_call(runner, call))
        await running(proc, call)
        proc.signal(signal.SIGTERM)
        await wait_line(proc, r"msg=draining")
        proc.signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait) == 128 + signal.SIGINT
        await wait_line(proc, r'msg="second signal, exiting now" signal=SIGINT')
        with pytest.raises(grpc.aio.AioRpcError):
            await inflight


# -- fault flags ---------------------------------------------------------------

async def test_fail_rate_one_fails_every_accepted_call(channel_to: Any) -> None:
    with run_stub("--fail-rate", "1.0", "--seed", "7") as proc:
        runner = channel_to(proc.addr)
        for _ in range(3):
            out = await exec_call(runner, new_call(), b"x")
            assert out.kinds == ["finished"]
            fin = out.finished
            assert (fin.success, fin.errorCode, fin.errorStr) == (False, 500, "injected failure")
        st = await status(runner)
        assert (st.requestsHandled, custom(st, "failed")) == (3, 3)


async def _crash_mid_call(proc: harness.Proc, runner: runner_pb2_grpc.RunnerStub,
                          call: dict[str, Any]) -> None:
    got: list[pb.RunnerMsg] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for m in runner.TryExec(iter([try_msg(call), *data_msgs(b"hi")]), timeout=30):
            got.append(m)
    assert [m.WhichOneof("body") for m in got] == ["result_start"]
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert await asyncio.to_thread(proc.wait) == 3


async def test_crash_after_n_exits_after_result_start(channel_to: Any) -> None:
    with run_stub("--crash-after", "2") as proc:
        runner = channel_to(proc.addr)
        (await exec_call(runner, new_call(), b"first")).assert_ok()
        await _crash_mid_call(proc, runner, new_call())


async def test_config_crash_exits_after_result_start(channel_to: Any) -> None:
    with run_stub() as proc:
        runner = channel_to(proc.addr)
        await _crash_mid_call(proc, runner, new_call(config={"crash": "yes"}))


async def test_hang_ms_answers_nothing_before_the_client_deadline(channel_to: Any) -> None:
    with run_stub("--hang-ms", "10000") as proc:
        runner = channel_to(proc.addr)
        got: list[pb.RunnerMsg] = []
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for m in runner.TryExec(iter([try_msg(new_call()), *data_msgs(b"")]),
                                          timeout=0.3):
                got.append(m)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Generous after the 0.3 s deadline: only catches waiting out the 10 s hang.
        assert got == [] and 0.25 <= time.monotonic() - t0 < 9


async def test_nack_delay_ms_delays_every_nack(channel_to: Any) -> None:
    with run_stub("--slots", "1", "--nack-after-ms", "0", "--nack-delay-ms", "300") as proc:
        runner = channel_to(proc.addr)
        hold = new_call(config={"sleep_ms": "5000"})
        holder = asyncio.create_task(exec_call(runner, hold))
        await accepted(proc, hold)
        t0 = time.monotonic()
        assert (await exec_call(runner, new_call())).nacked
        assert time.monotonic() - t0 >= 0.3
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder


# -- mTLS ----------------------------------------------------------------------

async def test_tls_serves_mutual_tls_only(tmp_path: Path) -> None:
    from fnlb.tls import init_ca, issue_cert

    ca_cert, _ = init_ca(tmp_path / "ca")
    srv_cert, srv_key = issue_cert(tmp_path / "ca", "runner", ["127.0.0.1"], tmp_path / "srv")
    cli_cert, cli_key = issue_cert(tmp_path / "ca", "lb", ["127.0.0.1"], tmp_path / "cli")
    with run_stub("--tls-cert", str(srv_cert), "--tls-key", str(srv_key),
                  "--tls-ca", str(ca_cert)) as proc:
        assert proc.fields["tls"] == "true"
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_cert.read_bytes(), private_key=cli_key.read_bytes(),
            certificate_chain=cli_cert.read_bytes())
        async with grpc.aio.secure_channel(proc.addr, creds) as ch:
            out = await exec_call(runner_pb2_grpc.RunnerStub(ch), new_call(), b"secret")
            out.assert_ok()
            assert out.body == b"secret"
        no_client_cert = grpc.ssl_channel_credentials(root_certificates=ca_cert.read_bytes())
        async with grpc.aio.secure_channel(proc.addr, no_client_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(proc.addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)


# -- command line ----------------------------------------------------------------

def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", STUB, *args], capture_output=True, text=True,
                          timeout=30)


def test_help_mentions_every_flag() -> None:
    res = _run_cli("--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # argparse wraps lines
    for flag in ("--listen", "--slots", "--memory-mb", "--nack-after-ms", "--cold-start-ms",
                 "--warm-cache", "--max-body-bytes", "--log-level", "--runner-id",
                 "--drain-grace", "--tls-cert", "--tls-key", "--tls-ca", "--fail-rate",
                 "--seed", "--crash-after", "--hang-ms", "--nack-delay-ms"):
        assert flag in text, flag
    assert "env RUNNER_STUB_MEMORY_MB" in text
    assert "default: 127.0.0.1:9190" in text and "default: 30s" in text


@pytest.mark.parametrize(("args", "flag"), [
    (["--slots", "0"], "--slots"),
    (["--slots", "abc"], "--slots"),
    (["--tls-cert", "x.crt"], "--tls-key"),
    (["--fail-rate", "2"], "--fail-rate"),
    (["--drain-grace", "soon"], "--drain-grace"),
    (["--listen", "nohost"], "--listen"),
    (["--tls-cert", "/nonexistent/a.crt", "--tls-key", "/nonexistent/a.key",
      "--tls-ca", "/nonexistent/ca.crt"], "--tls-cert: cannot read"),
])
def test_bad_flags_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    res = _run_cli("--listen", "127.0.0.1:0", *args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert flag in res.stderr
    assert "Traceback" not in res.stderr
