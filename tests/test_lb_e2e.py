"""The LB end to end: real `fnlb serve` and `runner-stub` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.harness import Proc, reserved_port, running, running_stubs, wait_until
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2_grpc
from tests.helpers import grpcurl_path

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def lb(runners: Sequence[str], *args: str) -> Iterator[Proc]:
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                          "--admin-listen", "127.0.0.1:0",
                          "--runners", ",".join(runners), "--drain-grace", "10s", *args]) as p:
        yield p


@contextlib.asynccontextmanager
async def lb_stub(proc: Proc) -> AsyncIterator[lb_pb2_grpc.LoadBalancerStub]:
    async with grpc.aio.insecure_channel(proc.addr) as ch:
        yield lb_pb2_grpc.LoadBalancerStub(ch)


async def runner_status(addr: str) -> object:
    async with grpc.aio.insecure_channel(addr) as ch:
        return await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)


def metrics_text(proc: Proc) -> str:
    with urllib.request.urlopen(f"http://{proc.fields['metrics_addr']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(proc: Proc, line_prefix: str) -> float:
    for line in metrics_text(proc).splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def invoke_req(fn_id: str = "echo", body: bytes = b"hello", **config: str) -> lb_pb2.InvokeRequest:
    return lb_pb2.InvokeRequest(fn_id=fn_id, body=body, config=config)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[list[Proc], Proc]]:
    with running_stubs(2, ["--slots", "4"]) as stubs, lb([s.addr for s in stubs]) as front:
        yield stubs, front


async def test_echo_through_the_lb(cluster: tuple[list[Proc], Proc]) -> None:
    stubs, front = cluster
    async with lb_stub(front) as stub:
        resp = await stub.Invoke(invoke_req(body=b"ping"), timeout=10)
    assert resp.body == b"ping"
    assert resp.status_code == 200
    assert resp.runner in {s.addr for s in stubs}
    assert resp.attempts >= 1 and resp.call_id
    text = metrics_text(front)
    assert 'fnlb_call_latency_seconds_count{call_status="completed"}' in text
    assert metric(front, 'fnlb_call_latency_seconds_count{call_status="completed"}') >= 1
    for name in ("fnlb_runner_sched_latency_seconds", "fnlb_runner_exec_latency_seconds",
                 "fnlb_placer_attempts", "fnlb_placer_latency_seconds",
                 "fnlb_placer_retries_total", "fnlb_placer_placed_total",
                 "fnlb_placer_timeouts_total", "fnlb_placer_client_cancels_total",
                 "fnlb_placer_client_timeouts_total", "fnlb_pool_empty_total",
                 "fnlb_pool_errors_total", "fnlb_calls_total", "fnlb_calls_inflight"):
        assert name in text, name
    assert metric(front, "fnlb_runner_exec_latency_seconds_count") >= 1


async def test_function_status_and_big_body(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    async with lb_stub(front) as stub:
        resp = await stub.Invoke(invoke_req(body=big), timeout=30)
        assert resp.body == big
        resp = await stub.Invoke(invoke_req(status="404"), timeout=10)
        assert resp.status_code == 404  # the function's answer, not an RPC error


async def test_invoke_stream_for_big_bodies(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    body = b"x" * (2 * 1024 * 1024 + 17)

    async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
        yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(fn_id="echo"))
        for off in range(0, len(body), 256 * 1024):
            yield lb_pb2.InvokeStreamRequest(data=body[off:off + 256 * 1024])

    async with lb_stub(front) as stub:
        got, head = [], None
        async for msg in stub.InvokeStream(requests(), timeout=30):
            if msg.WhichOneof("msg") == "response":
                head = msg.response
            else:
                got.append(msg.data)
    assert head is not None and head.status_code == 200
    assert b"".join(got) == body


async def test_bad_requests_get_clear_errors(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    async with lb_stub(front) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(lb_pb2.InvokeRequest(fn_id="", body=b"x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "fn_id" in (e.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(lb_pb2.InvokeRequest(fn_id="f", timeout_s=-1), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout_s" in (e.value.details() or "")
        # The LB keeps serving.
        assert (await stub.Invoke(invoke_req(), timeout=5)).body == b"hello"


async def test_oversized_body_is_invalid_argument() -> None:
    with running_stubs(1) as stubs, lb([stubs[0].addr], "--max-body-bytes", "1000") as front:
        async with lb_stub(front) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Invoke(invoke_req(body=b"x" * 2000), timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max-body-bytes" in (e.value.details() or "")
            status = await runner_status(stubs[0].addr)
            assert status.requestsReceived == 0  # type: ignore[attr-defined]


def test_unknown_placer_and_bad_flags_fail_at_startup() -> None:
    for args, needle in ((["--runners", "127.0.0.1:1", "--placer", "nope"], "unknown placer"),
                         (["--runners", "127.0.0.1:x"], "--runners"),
                         (["--runners", "127.0.0.1:1", "--retry-all-delay", "soon"],
                          "--retry-all-delay"),
                         (["--runners", "127.0.0.1:1", "--health-backoff-max", "0"],
                          "--health-backoff-max"),
                         ([], "no runners")):
        r = subprocess.run([sys.executable, "-m", "fnlb", "serve", "--listen", "127.0.0.1:0",
                            "--metrics-listen", "", *args], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr


@pytest.mark.parametrize("queue", ["off", "on"])
async def test_spill_over_with_one_slot_runners(queue: str) -> None:
    # --queue off is fn's behaviour: a busy runner NACKs and the call walks on to
    # the next one. With the queue (the default) the LB knows each runner has
    # one slot, so calls wait for a free one instead of being refused.
    with running_stubs(3, ["--slots", "1", "--nack-after-ms", "1"]) as stubs, \
            lb([s.addr for s in stubs], "--placer", "ch", "--queue", queue) as front:
        # Capacity is known once every runner answered a Status poll.
        await wait_until(lambda: metric(front, 'fnlb_pool_runners{state="healthy"}') == 3,
                         what="every runner probed")
        async with lb_stub(front) as stub:
            calls = [stub.Invoke(invoke_req(fn_id="same", body=str(i).encode(), sleep_ms="150"),
                                 timeout=30) for i in range(9)]
            results = await asyncio.gather(*calls)
        assert sorted(int(r.body) for r in results) == list(range(9))
        assert len({r.runner for r in results}) == 3
        assert metric(front, 'fnlb_placer_placed_total{result="ok"}') == 9
        nacks = metric(front, 'fnlb_placer_retries_total{reason="busy"}')
        if queue == "off":
            assert nacks > 0
        else:
            assert nacks == 0
            assert metric(front, "fnlb_queue_wait_seconds_count") >= 6  # 9 calls, 3 slots
            assert metric(front, "fnlb_queue_depth") == 0


async def test_all_busy_past_placer_timeout_is_unavailable() -> None:
    with running_stubs(1, ["--slots", "1", "--nack-after-ms", "1"]) as stubs, \
            lb([stubs[0].addr], "--placer-timeout", "300ms") as front:
        async with lb_stub(front) as stub:
            hog = asyncio.ensure_future(stub.Invoke(invoke_req(sleep_ms="3000"), timeout=30))
            await wait_until(lambda: _active(stubs[0].addr), what="runner busy")
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Invoke(invoke_req(), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "too busy" in (e.value.details() or "")
            # Not before the 300 ms placer timeout; the upper bound is generous and
            # only catches a hang (the timeouts metric shows which timeout ended it).
            assert 0.3 <= time.monotonic() - t0 < 20
            assert metric(front, 'fnlb_call_latency_seconds_count{call_status="server_busy"}') == 1
            assert metric(front, "fnlb_placer_timeouts_total") == 1
            assert (await hog).status_code == 200


async def _active(addr: str) -> int:
    return int((await runner_status(addr)).active)  # type: ignore[attr-defined]


async def test_client_deadline_is_deadline_exceeded(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    before = metric(front, 'fnlb_call_latency_seconds_count{call_status="timeouts"}')
    async with lb_stub(front) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(invoke_req(sleep_ms="3000"), timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: metric(
        front, 'fnlb_call_latency_seconds_count{call_status="timeouts"}') == before + 1,
        what="timeouts latency sample")


async def test_client_cancel_reaches_the_runner() -> None:
    with running_stubs(1) as stubs, lb([stubs[0].addr]) as front:
        async with lb_stub(front) as stub:
            call = stub.Invoke(invoke_req(sleep_ms="10000"), timeout=30)
            await wait_until(lambda: _active(stubs[0].addr), what="call running")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            stubs[0].wait_for_line(r"call canceled")
            await wait_until(lambda: metric(
                front, 'fnlb_call_latency_seconds_count{call_status="canceled"}') == 1,
                what="canceled sample")
            assert await _active(stubs[0].addr) == 0


async def test_runner_crash_mid_call_errors_and_is_not_rerun() -> None:
    with running_stubs(2) as stubs, lb([s.addr for s in stubs]) as front:
        async with lb_stub(front) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Invoke(invoke_req(crash="1"), timeout=20)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_until(lambda: any(s.popen.poll() is not None for s in stubs),
                             what="a runner to exit")
            crashed = [s for s in stubs if s.popen.poll() is not None]
            assert len(crashed) == 1
            alive = next(s for s in stubs if s is not crashed[0])
            assert (await runner_status(alive.addr)).requestsReceived == 0  # type: ignore[attr-defined]
            # Other calls keep going, on the survivor.
            for _ in range(3):
                resp = await stub.Invoke(invoke_req(), timeout=10)
                assert resp.runner == alive.addr
            assert metric(front, 'fnlb_placer_placed_total{result="error"}') == 1


async def test_runner_killed_mid_call() -> None:
    with running_stubs(2) as stubs, lb([s.addr for s in stubs]) as front:
        async with lb_stub(front) as stub:
            call = asyncio.ensure_future(stub.Invoke(invoke_req(sleep_ms="10000"), timeout=30))

            async def busy_one() -> Proc | None:
                for s in stubs:
                    if await _active(s.addr):
                        return s
                return None

            victim = await wait_until(busy_one, what="a runner running the call")
            victim.popen.kill()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            survivor = next(s for s in stubs if s is not victim)
            assert (await runner_status(survivor.addr)).requestsReceived == 0  # type: ignore[attr-defined]
            assert (await stub.Invoke(invoke_req(), timeout=10)).runner == survivor.addr


async def test_dead_runner_in_the_list_is_skipped() -> None:
    # A reserved port nothing listens on: refused for the whole test, which a
    # port bound and released could stop being.
    with reserved_port() as dead, running_stubs(1) as stubs, \
            lb([f"127.0.0.1:{dead}", stubs[0].addr]) as front:
        async with lb_stub(front) as stub:
            for i in range(6):
                resp = await stub.Invoke(invoke_req(body=str(i).encode()), timeout=10)
                assert resp.runner == stubs[0].addr
        # Its first failed probe (or call) takes it out of placement: at most
        # a call that raced that probe tried it.
        assert metric(front, 'fnlb_placer_retries_total{reason="error"}') <= 1
        assert metric(front, 'fnlb_pool_runners{state="healthy"}') == 1


async def test_detached_call_returns_on_acceptance(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    async with lb_stub(front) as stub:
        resp = await stub.Invoke(lb_pb2.InvokeRequest(
            fn_id="bg", type=lb_pb2.DETACHED, config={"sleep_ms": "3000"}), timeout=20)
    assert resp.status_code == 202
    assert resp.runner
    # Returned while the function still runs there (for 3 s), not once it was done.
    assert await _active(resp.runner) >= 1


async def test_sigterm_drains_in_flight_calls() -> None:
    with running_stubs(1) as stubs, lb([stubs[0].addr]) as front:
        async with lb_stub(front) as stub:
            call = asyncio.ensure_future(stub.Invoke(invoke_req(sleep_ms="1000"), timeout=20))
            await wait_until(lambda: _active(stubs[0].addr), what="call running")
            front.signal(signal.SIGTERM)
            front.wait_for_line("msg=draining")
            # The listener stays open while it drains: a new call is told why,
            # not refused by a closed port.
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Invoke(invoke_req(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in (e.value.details() or "")
            resp = await call
            assert resp.status_code == 200 and resp.body == b"hello"
        assert front.wait(15) == 0


def test_grpcurl_lists_describes_and_invokes(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    gc = grpcurl_path()

    def run(*args: str) -> str:
        r = subprocess.run([gc, "-plaintext", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    services = run(front.addr, "list").split()
    assert "fnlb.v1.LoadBalancer" in services and "grpc.health.v1.Health" in services
    assert "rpc Invoke" in run(front.addr, "describe", "fnlb.v1.LoadBalancer")
    out = run("-d", json.dumps({"fn_id": "echo", "body": "aGVsbG8="}), front.addr,
              "fnlb.v1.LoadBalancer/Invoke")
    resp = json.loads(out)
    assert resp["body"] == "aGVsbG8=" and resp.get("statusCode", resp.get("status_code")) == 200
    health = json.loads(run(front.addr, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"


def test_fnlb_invoke_cli(cluster: tuple[list[Proc], Proc]) -> None:
    _, front = cluster
    r = subprocess.run([sys.executable, "-m", "fnlb", "invoke", "--lb", front.addr, "echo",
                        "--data", "via-cli"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "via-cli"
    assert "status=200" in r.stderr
