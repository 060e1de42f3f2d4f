"""Overload with real processes: shedding, SIGTERM with a queue, two LBs sharing runners."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from fnlb.harness import running_stubs, wait_until
from fnlb.v1 import lb_pb2
from tests.test_lb_e2e import invoke_req, lb, lb_stub, metric, runner_status

pytestmark = pytest.mark.slow


def _probed(front: object, n: int) -> bool:
    return metric(front, 'fnlb_pool_runners{state="healthy"}') == n  # type: ignore[arg-type]


async def test_a_full_queue_sheds_with_resource_exhausted_and_a_pushback() -> None:
    with running_stubs(1, ["--slots", "1"]) as stubs, \
            lb([stubs[0].addr], "--max-queue", "2") as front:
        await wait_until(lambda: _probed(front, 1), what="runner probed")
        async with lb_stub(front) as stub:
            running = [asyncio.ensure_future(stub.Invoke(invoke_req(sleep_ms="700"), timeout=30))
                       for _ in range(3)]  # one runs, two wait
            await wait_until(lambda: metric(front, "fnlb_queue_depth") == 2, what="2 queued")
            call = stub.Invoke(invoke_req(), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-queue" in (e.value.details() or "")
            trailers = dict(await call.trailing_metadata() or ())
            assert int(trailers["grpc-retry-pushback-ms"]) > 0
            assert [r.status_code for r in await asyncio.gather(*running)] == [200] * 3
        assert metric(front, 'fnlb_queue_rejected_total{reason="queue_full"}') == 1
        assert metric(front, 'fnlb_calls_completed_total{call_status="server_busy"}') == 1
        assert metric(front, 'fnlb_placer_retries_total{reason="busy"}') == 0


async def test_sigterm_places_queued_calls_within_the_grace() -> None:
    with running_stubs(1, ["--slots", "1"]) as stubs, \
            lb([stubs[0].addr], "--drain-grace", "10s") as front:
        await wait_until(lambda: _probed(front, 1), what="runner probed")
        async with lb_stub(front) as stub:
            calls = [asyncio.ensure_future(
                stub.Invoke(invoke_req(body=str(i).encode(), sleep_ms="300"), timeout=30))
                for i in range(4)]
            await wait_until(lambda: metric(front, "fnlb_queue_depth") == 3, what="3 queued")
            front.signal(signal.SIGTERM)
            results = await asyncio.gather(*calls)
        # Every queued call got the runner during the drain, one after the other.
        assert sorted(r.body for r in results) == [b"0", b"1", b"2", b"3"]
        assert front.wait(20) == 0


async def test_sigterm_answers_calls_still_queued_at_the_end_of_the_grace() -> None:
    with running_stubs(1, ["--slots", "1"]) as stubs, \
            lb([stubs[0].addr], "--drain-grace", "1s") as front:
        await wait_until(lambda: _probed(front, 1), what="runner probed")
        async with lb_stub(front) as stub:
            hog = asyncio.ensure_future(stub.Invoke(invoke_req(sleep_ms="5000"), timeout=30))
            await wait_until(lambda: metric(front, "fnlb_calls_inflight") == 1, what="hog runs")
            queued = asyncio.ensure_future(stub.Invoke(invoke_req(), timeout=30))
            await wait_until(lambda: metric(front, "fnlb_queue_depth") == 1, what="1 queued")
            front.signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await queued
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (e.value.details() or "")
            assert "not placed" in (e.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await hog  # longer than the grace: cut, and told so
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "drain grace 1s ran out" in (cut.value.details() or "")
        assert front.wait(20) == 0


async def test_two_lbs_sharing_runners_run_every_call_once() -> None:
    calls_per_lb = 24
    with running_stubs(2, ["--slots", "2"]) as stubs:
        addrs = [s.addr for s in stubs]
        with lb(addrs, "--placer", "chbl") as a, lb(addrs, "--placer", "chbl") as b:
            await wait_until(lambda: _probed(a, 2) and _probed(b, 2), what="runners probed")

            async def burst(front: object, tag: str) -> list[lb_pb2.InvokeResponse]:
                async with lb_stub(front) as stub:  # type: ignore[arg-type]
                    return list(await asyncio.gather(*(
                        stub.Invoke(lb_pb2.InvokeRequest(
                            fn_id="f", call_id=f"{tag}-{i}", body=f"{tag}-{i}".encode(),
                            config={"sleep_ms": "100"}), timeout=60)
                        for i in range(calls_per_lb))))

            results = await asyncio.gather(burst(a, "a"), burst(b, "b"))
            bodies = sorted(r.body for rs in results for r in rs)
            assert bodies == sorted(f"{t}-{i}".encode() for t in "ab" for i in range(calls_per_lb))
            # Each runner counts what it ran: every call exactly once, nowhere twice.
            handled = [int((await runner_status(x)).requestsHandled) for x in addrs]  # type: ignore[attr-defined]
            assert sum(handled) == 2 * calls_per_lb
            # Each LB's view is partial; refusals fill the gap, but stay few.
            nacks = sum(metric(p, 'fnlb_placer_retries_total{reason="busy"}') for p in (a, b))
            assert nacks < 2 * calls_per_lb
