"""Detached calls survive the LB's SIGTERM: after the 202 the runner owns the call.

Real processes: `fnlb serve` and two `runner-stub`s on 127.0.0.1. The proof
comes from the runners themselves (their Status counters and call logs), read
after the LB is gone.
"""

from __future__ import annotations

import asyncio
import re
import signal

import grpc
import pytest
from google.protobuf import empty_pb2

from fnlb.harness import Proc, parse_logfmt, running_stubs, wait_until
from fnlb.v1 import lb_pb2, runner_pb2, runner_pb2_grpc
from tests.test_lb_e2e import lb, lb_stub

pytestmark = pytest.mark.slow

N_CALLS = 20


async def _status(addr: str) -> runner_pb2.RunnerStatus:
    async with grpc.aio.insecure_channel(addr) as ch:
        st: runner_pb2.RunnerStatus = await runner_pb2_grpc.RunnerStub(ch).Status(
            empty_pb2.Empty(), timeout=5)
        return st


async def _statuses(stubs: list[Proc]) -> list[runner_pb2.RunnerStatus]:
    return [await _status(s.addr) for s in stubs]


def _ids(proc: Proc, msg: str) -> set[str]:
    rx = re.compile(rf'msg="{re.escape(msg)}"')
    return {parse_logfmt(line).get("call_id", "") for line in proc.read_lines() if rx.search(line)}


async def test_detached_calls_run_to_their_end_when_the_lb_is_stopped() -> None:
    with running_stubs(2, ["--slots", "16", "--memory-mb", "4096"]) as stubs, \
            lb([s.addr for s in stubs], "--drain-grace", "10s") as front:
        async with lb_stub(front) as stub:
            resps = await asyncio.gather(*(stub.Invoke(lb_pb2.InvokeRequest(
                fn_id="bg", call_id=f"detached-{i}", type=lb_pb2.DETACHED,
                config={"sleep_ms": "3000"}), timeout=20) for i in range(N_CALLS)))
        assert [r.status_code for r in resps] == [202] * N_CALLS
        ids = {r.call_id for r in resps}
        await asyncio.sleep(0.3)  # as the run did: SIGTERM 0.3 s after the 202s
        before = await _statuses(stubs)
        assert sum(s.active for s in before) == N_CALLS  # all still running
        front.signal(signal.SIGTERM)
        assert await asyncio.to_thread(front.wait, 15) == 0
        # The LB stopped reading their results and left them to the runners.
        left = [parse_logfmt(line) for line in front.read_lines()
                if 'msg="leaving detached calls to the runner"' in line]
        assert sum(int(f["calls"]) for f in left) == N_CALLS

        async def idle() -> bool:
            return sum(s.active for s in await _statuses(stubs)) == 0

        await wait_until(idle, within=20, what="detached calls to finish on the runners")
        after = await _statuses(stubs)
        completed = sum(int(a.customStatus["completed"]) - int(b.customStatus["completed"])
                        for a, b in zip(after, before, strict=True))
        canceled = sum(int(a.customStatus["canceled"]) for a in after)
        assert (completed, canceled) == (N_CALLS, 0)
        ended = set().union(*(_ids(s, "detached call ended") for s in stubs))
        assert ended == ids
        assert not set().union(*(_ids(s, "call canceled") for s in stubs))


async def test_a_detached_call_cancelled_before_its_202_stops() -> None:
    """Before the 202 the call is not yet the runner's: a cancel stops it and frees its slot."""
    with running_stubs(1, ["--slots", "1"]) as (stub_proc,):
        async with grpc.aio.insecure_channel(stub_proc.addr) as ch:
            stream = runner_pb2_grpc.RunnerStub(ch).TryExec()
            await stream.write(runner_pb2.ClientMsg(**{"try": runner_pb2.TryCall(  # type: ignore[arg-type]
                models_call_json='{"id": "early", "fn_id": "bg", "type": "detached"}')}))

            async def taken() -> bool:
                return (await _status(stub_proc.addr)).active == 1

            # No body sent: the runner took the call but cannot acknowledge it yet.
            await wait_until(taken, what="the call to take the slot")
            stream.cancel()
        await asyncio.to_thread(stub_proc.wait_for_line, r'msg="call canceled" call_id=early')
        st = await _status(stub_proc.addr)
        assert (st.active, st.slots_free, st.customStatus["canceled"]) == (0, 1, "1")


async def test_a_runner_drains_detached_calls_it_runs_without_a_stream() -> None:
    """SIGTERM of the runner waits (within its drain grace) for an orphaned detached call."""
    with running_stubs(1) as (stub_proc,):
        async with grpc.aio.insecure_channel(stub_proc.addr) as ch:
            stream = runner_pb2_grpc.RunnerStub(ch).TryExec()
            await stream.write(runner_pb2.ClientMsg(**{"try": runner_pb2.TryCall(  # type: ignore[arg-type]
                models_call_json='{"id": "orphan", "fn_id": "bg", "type": "detached", '
                                 '"config": {"sleep_ms": "1500"}}')}))
            await stream.write(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(eof=True)))
            first = await stream.read()
            assert first.result_start.http.status_code == 202
            stream.cancel()
        await asyncio.to_thread(stub_proc.wait_for_line,
                                r'msg="stream gone after 202; detached call runs on" '
                                r'call_id=orphan')
        stub_proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(stub_proc.wait, 20) == 0
        lines = stub_proc.read_lines()
        ended = [i for i, line in enumerate(lines)
                 if 'msg="detached call ended" call_id=orphan' in line]
        stopped = [i for i, line in enumerate(lines) if "msg=stopped" in line]
        assert ended and stopped and ended[0] < stopped[0]
        assert not _ids(stub_proc, "call canceled")
