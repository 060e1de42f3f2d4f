"""Where a call's time goes, end to end: real `fnlb serve` and `runner-stub` processes.

The stubs' timings are known (--image-pull-ms, --cold-start-ms, config sleep_ms),
so the phases the LB reports can be checked against them, and against the
LB's own time for the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.harness import Proc, parse_logfmt, running, running_stubs, wait_until
from fnlb.phases import ATTEMPTS_TRAILER, PHASES, PHASES_TRAILER, TRACE_HEADER, parse_phases
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2, runner_pb2_grpc
from tests.helpers import grpcurl_path

pytestmark = pytest.mark.slow

PULL_MS, COLD_MS, SLEEP_MS = 400, 200, 300
TRACE = ((TRACE_HEADER, "1"),)


@contextlib.contextmanager
def lb(runners: Sequence[str], *args: str) -> Iterator[Proc]:
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                          "--admin-listen", "", "--runners", ",".join(runners),
                          "--drain-grace", "5s", *args]) as p:
        yield p


@contextlib.asynccontextmanager
async def front(proc: Proc) -> AsyncIterator[lb_pb2_grpc.LoadBalancerStub]:
    async with grpc.aio.insecure_channel(proc.addr) as ch:
        yield lb_pb2_grpc.LoadBalancerStub(ch)


def metric(proc: Proc, name: str, labels: str = "") -> float:
    wanted = f"{name}{{{labels}}}" if labels else name
    with urllib.request.urlopen(f"http://{proc.fields['metrics_addr']}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def access_lines(proc: Proc, start: int = 0) -> list[dict[str, str]]:
    return [parse_logfmt(line) for line in proc.read_lines(start)
            if "logger=fnlb.access msg=call " in line]


def trailers_of(md: object) -> dict[str, str]:
    return {k: v for k, v in md or ()}  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def held(stubs: Sequence[Proc], ms: int) -> AsyncIterator[None]:
    """Every slot of ``stubs`` (one each) taken by a call sent to the runner itself, so
    the LB's tries are NACKed until ``ms`` is over (the LB does not know of them)."""
    channels = [grpc.aio.insecure_channel(s.addr) for s in stubs]

    async def active(ch: grpc.aio.Channel) -> int:
        status = await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)
        return int(status.active)

    for ch in channels:  # the calls before are gone (a cancelled one may linger a moment)
        await wait_until(lambda ch=ch: _is(active(ch), 0), what="the runner to be idle")
    calls = []
    for i, ch in enumerate(channels):
        model = {"id": f"hold-{i}", "fn_id": "hold", "type": "sync", "memory": 64,
                 "config": {"sleep_ms": str(ms)}}
        tc = runner_pb2.TryCall(models_call_json=json.dumps(model), slot_hash_id="hold")
        req = runner_pb2.CallRequest(**{"try": tc})  # type: ignore[arg-type]
        calls.append(runner_pb2_grpc.RunnerStub(ch).Call(req, timeout=30))
    try:
        for ch in channels:
            await wait_until(lambda ch=ch: _is(active(ch), 1),
                             what="the holding call to start on the runner")
        yield
    finally:
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
        for ch in channels:
            await ch.close()


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.fixture(scope="module")
def timed() -> Iterator[tuple[Proc, Proc]]:
    """One stub with known start-up timings, behind an LB."""
    with running_stubs(1, ["--slots", "2", "--image-pull-ms", str(PULL_MS),
                           "--cold-start-ms", str(COLD_MS)]) as stubs, \
            lb([stubs[0].addr]) as proc:
        yield stubs[0], proc


def test_phases_add_up_to_the_lb_time_with_known_stub_timings(timed: tuple[Proc, Proc]) -> None:
    stub, proc = timed

    async def go() -> tuple[lb_pb2.InvokeResponse, dict[str, str]]:
        async with front(proc) as lbs:
            # A first call opens the LB's connection to the runner (and warms "warm").
            await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="warm", image="other"), timeout=10)
            call = lbs.Invoke(lb_pb2.InvokeRequest(
                fn_id="phased", image="img:1", call_id="phased-1", body=b"abc",
                config={"sleep_ms": str(SLEEP_MS)}), timeout=20, metadata=TRACE)
            resp = await call
            return resp, trailers_of(await call.trailing_metadata())

    start = len(proc.read_lines())
    resp, trailers = asyncio.run(go())
    assert resp.body == b"abc"
    ms = parse_phases(trailers[PHASES_TRAILER])
    assert list(ms) == [*PHASES, "total"]
    # Each phase is what the stub was told to take (it sleeps at least that long).
    assert PULL_MS <= ms["image_pull"] < PULL_MS * 1.5
    assert COLD_MS <= ms["cold_start"] < COLD_MS * 1.5
    assert SLEEP_MS <= ms["execution"] < SLEEP_MS * 1.5
    assert ms["queue"] == 0.0
    total = ms.pop("total")
    parts = sum(ms.values())
    assert abs(total - parts) <= 0.05 * total, (total, ms)
    # The access line says the same.
    line = next(f for f in access_lines(proc, start) if f["call_id"] == "phased-1")
    assert float(line["total_ms"]) == pytest.approx(total, abs=0.11)
    assert float(line["exec_ms"]) == pytest.approx(ms["execution"], abs=0.11)
    # The second call for the image finds it pulled and the function warm.
    async def again() -> dict[str, float]:
        async with front(proc) as lbs:
            call = lbs.Invoke(lb_pb2.InvokeRequest(
                fn_id="phased", image="img:1", config={"sleep_ms": str(SLEEP_MS)}),
                timeout=20, metadata=TRACE)
            await call
            return parse_phases(trailers_of(await call.trailing_metadata())[PHASES_TRAILER])

    warm = asyncio.run(again())
    assert warm["image_pull"] == 0.0 and warm["cold_start"] == 0.0
    assert warm["total"] < total - PULL_MS


def test_phase_histogram_holds_the_reported_phases(timed: tuple[Proc, Proc]) -> None:
    stub, proc = timed
    before = {p: metric(proc, "fnlb_call_phase_seconds_sum", f'phase="{p}"') for p in PHASES}
    counts = {p: metric(proc, "fnlb_call_phase_seconds_count", f'phase="{p}"') for p in PHASES}

    async def go() -> None:
        async with front(proc) as lbs:
            await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="hist", image="img:hist",
                                                  config={"sleep_ms": "100"}), timeout=20)

    asyncio.run(go())
    grew = {p: metric(proc, "fnlb_call_phase_seconds_sum", f'phase="{p}"') - before[p]
            for p in PHASES}
    assert grew["image_pull"] >= PULL_MS / 1000
    assert grew["cold_start"] >= COLD_MS / 1000
    assert grew["execution"] >= 0.1
    for p in ("placement", "runner_wait", "transfer", "execution"):
        assert metric(proc, "fnlb_call_phase_seconds_count", f'phase="{p}"') == counts[p] + 1
    # Nobody waited in the queue: no queue sample.
    assert metric(proc, "fnlb_call_phase_seconds_count", 'phase="queue"') == counts["queue"]


def test_overhead_metric_per_call_status() -> None:
    with running_stubs(1, ["--slots", "1", "--nack-after-ms", "0"]) as stubs, \
            lb([stubs[0].addr], "--queue", "off", "--placer-timeout", "200ms") as proc:

        def count(status: str) -> float:
            return metric(proc, "fnlb_call_overhead_seconds_count", f'call_status="{status}"')

        async def go() -> None:
            async with front(proc) as lbs:
                await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="ok"), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError):
                    await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="bad", config={"fail": "x"}),
                                     timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="late",
                                                          config={"sleep_ms": "2000"}),
                                     timeout=0.3)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                async with held(stubs, 1000):
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="busy"), timeout=10)
                    assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        asyncio.run(go())
        for status in ("completed", "errors", "timeouts", "server_busy"):
            assert count(status) >= 1, status
        assert count("canceled") == 0
        # Overhead excludes execution: the 2 s function that timed out is no part
        # of it, and a completed echo costs the LB little.
        assert metric(proc, "fnlb_call_overhead_seconds_sum", 'call_status="completed"') < 1.0


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[list[Proc], Proc]]:
    """Two one-slot stubs that NACK at once, behind an LB that sweeps (no queue)."""
    with running_stubs(2, ["--slots", "1", "--nack-after-ms", "0"]) as stubs, \
            lb([s.addr for s in stubs], "--queue", "off", "--placer-timeout", "10s") as proc:
        yield stubs, proc


def _attempts(value: str) -> list[list[str]]:
    return [entry.split(" ") for entry in value.split(", ")]


def test_trailers_show_nacked_attempts_then_the_commit(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair

    async def go() -> tuple[lb_pb2.InvokeResponse, dict[str, str]]:
        async with front(proc) as lbs, held(stubs, 600):
            call = lbs.Invoke(lb_pb2.InvokeRequest(fn_id="traced", body=b"x"), timeout=10,
                              metadata=TRACE)
            resp = await call
            return resp, trailers_of(await call.trailing_metadata())

    resp, trailers = asyncio.run(go())
    entries = _attempts(trailers[ATTEMPTS_TRAILER])
    addrs = {s.addr for s in stubs}
    assert entries[0][0] in addrs and entries[0][1] == "nack"
    assert entries[-1][:2] == [resp.runner, "committed"]
    assert all(e[1] == "nack" for e in entries[1:-1] if len(e) == 3)
    # A sweep of 300 ms has more attempts than the trailer keeps: the middle is elided.
    assert resp.attempts > 16
    assert len(entries) == 17 and entries[8][0].startswith("+") and entries[8][-1] == "more"
    assert int(entries[8][0][1:]) == resp.attempts - 16
    assert len(trailers[ATTEMPTS_TRAILER]) < 2048
    ms = parse_phases(trailers[PHASES_TRAILER])
    assert ms["placement"] >= 300  # the sweep until a slot was free


def test_trailers_on_error_and_on_invoke_stream(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair

    async def go() -> tuple[grpc.aio.AioRpcError, dict[str, str], bytes]:
        async with front(proc) as lbs:
            async with held(stubs, 300):
                # NACKed until a slot is free, then the function fails.
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="t", config={"fail": "no"}),
                                     timeout=10, metadata=TRACE)
            # InvokeStream, OK: the trailers come after the body.
            stream = lbs.InvokeStream(metadata=TRACE, timeout=10)
            await stream.write(lb_pb2.InvokeStreamRequest(
                request=lb_pb2.InvokeRequest(fn_id="s", body=b"streamed")))
            await stream.done_writing()
            body = b"".join([m.data async for m in stream if m.WhichOneof("msg") == "data"])
            return e.value, trailers_of(await stream.trailing_metadata()), body

    error, stream_trailers, body = asyncio.run(go())
    assert error.code() == grpc.StatusCode.UNKNOWN
    failed = trailers_of(error.trailing_metadata())
    entries = _attempts(failed[ATTEMPTS_TRAILER])
    assert entries[0][1] == "nack" and entries[-1][1] == "committed"
    assert parse_phases(failed[PHASES_TRAILER])["placement"] > 0
    assert body == b"streamed"
    assert _attempts(stream_trailers[ATTEMPTS_TRAILER])[-1][1] == "committed"
    assert parse_phases(stream_trailers[PHASES_TRAILER])["total"] > 0


def test_no_trace_trailers_unless_asked(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair

    async def go() -> dict[str, str]:
        async with front(proc) as lbs:
            call = lbs.Invoke(lb_pb2.InvokeRequest(fn_id="quiet"), timeout=10)
            await call
            return trailers_of(await call.trailing_metadata())

    trailers = asyncio.run(go())
    assert ATTEMPTS_TRAILER not in trailers and PHASES_TRAILER not in trailers


def test_grpcurl_trace_header_shows_the_attempts(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair

    async def go() -> subprocess.CompletedProcess[str]:
        # Both runners busy for longer than grpcurl takes to start: its call is
        # NACKed until one is free.
        async with held(stubs, 1500):
            return await asyncio.to_thread(
                subprocess.run,
                [grpcurl_path(), "-plaintext", "-H", "fnlb-trace: 1", "-v", "-d",
                 '{"fn_id": "curl", "body": "aGk="}', proc.addr,
                 "fnlb.v1.LoadBalancer/Invoke"],
                capture_output=True, text=True, timeout=30)

    r = asyncio.run(go())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    trailers = out[out.index("Response trailers received:"):]
    line = next(x for x in trailers.splitlines() if x.startswith("fnlb-attempts: "))
    entries = _attempts(line.removeprefix("fnlb-attempts: "))
    assert entries[0][1] == "nack" and entries[-1][1] == "committed"
    assert "fnlb-phases: queue=" in trailers


def test_fnlb_invoke_verbose_prints_the_trace(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair
    r = subprocess.run([sys.executable, "-m", "fnlb", "invoke", "--lb", proc.addr, "-v",
                        "verbose", "--data", "hi", "--config", "sleep_ms=50"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi"
    err = r.stderr.splitlines()
    assert err[1].startswith("fnlb-attempts: ") and "committed" in err[1]
    assert err[2].startswith("fnlb-phases: queue=")
    table = {line.split()[0]: line.split()[1:] for line in err[3:]}
    assert set(table) == {"phase", *PHASES, "total"}
    assert float(table["execution"][0]) >= 50


def test_access_log_line_per_call(pair: tuple[list[Proc], Proc]) -> None:
    stubs, proc = pair
    start = len(proc.read_lines())

    async def go() -> lb_pb2.InvokeResponse:
        async with front(proc) as lbs:
            resp = await lbs.Invoke(lb_pb2.InvokeRequest(
                fn_id="logged", app_id="shop", call_id="acc-1", body=b"12345",
                config={"sleep_ms": "20"}), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await lbs.Invoke(lb_pb2.InvokeRequest(fn_id="logged", call_id="acc-2",
                                                      config={"fail": "boom"}), timeout=10)
            return resp

    resp = asyncio.run(go())
    lines = {f["call_id"]: f for f in access_lines(proc, start)}
    ok = lines["acc-1"]
    assert {k: ok[k] for k in ("fn_id", "app_id", "type", "status", "grpc_code", "runner",
                               "attempts", "bytes_in", "bytes_out")} == {
        "fn_id": "logged", "app_id": "shop", "type": "sync", "status": "completed",
        "grpc_code": "OK", "runner": resp.runner, "attempts": str(resp.attempts),
        "bytes_in": "5", "bytes_out": "5"}
    assert float(ok["exec_ms"]) >= 20 and float(ok["total_ms"]) >= float(ok["exec_ms"])
    assert float(ok["queue_ms"]) == 0.0
    failed = lines["acc-2"]
    assert failed["status"] == "errors" and failed["grpc_code"] == "UNKNOWN"
    assert failed["bytes_out"] == "0"


def test_access_log_rate_limit_and_opt_out() -> None:
    with running_stubs(1, ["--slots", "8"]) as stubs, \
            lb([stubs[0].addr], "--access-log-rate", "5") as limited, \
            lb([stubs[0].addr], "--access-log", "off") as off:

        async def burst(proc: Proc, n: int) -> float:
            async with front(proc) as lbs:
                t0 = time.monotonic()
                await asyncio.gather(*(lbs.Invoke(lb_pb2.InvokeRequest(fn_id="many"),
                                                  timeout=20) for _ in range(n)))
                return time.monotonic() - t0

        elapsed = asyncio.run(burst(limited, 40))
        suppressed = metric(limited, "fnlb_access_log_suppressed_total")
        # Every call either logged (once our pump has read its line) or counted.
        asyncio.run(wait_until(lambda: len(access_lines(limited)) + suppressed == 40,
                               what="40 calls logged or suppressed"))
        logged = len(access_lines(limited))
        # A burst of 5, then 5 per second.
        assert 5 <= logged <= 5 + 5 * elapsed + 1, (logged, elapsed)

        asyncio.run(burst(off, 3))
        assert access_lines(off) == []
        assert metric(off, "fnlb_access_log_suppressed_total") == 0
