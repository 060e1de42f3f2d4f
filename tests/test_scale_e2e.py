"""Issue 17 against real processes: the port-range runner host, the LB's poll
budget as the runners count it, and idle channels closed and re-dialled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.scale import healthy, start_host, start_lb, write_runners
from fnlb.errors import ConfigError
from fnlb.harness import ProcGroup, wait_until
from fnlb.transport import GrpcRunner
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2_grpc
from runner_stub.cli import parse_config
from runner_stub.config import StubConfig
from tests.fakes import make_call
from tests.test_stub_e2e import custom, exec_call, new_call, status

pytestmark = pytest.mark.slow


@pytest.fixture
def group() -> Iterator[ProcGroup]:
    with ProcGroup(drain=False) as g:
        yield g


# -- the runner host ------------------------------------------------------------------


def test_listen_takes_a_port_range() -> None:
    cfg = parse_config(["--listen", "127.0.0.1:20000-20999"], environ={})
    assert cfg.port_range and cfg.listen == "127.0.0.1:20000-20999"
    assert not StubConfig(listen="127.0.0.1:9190").port_range
    for bad in ("127.0.0.1:20999-20000", "127.0.0.1:0-10", "127.0.0.1:1-20000"):
        with pytest.raises(ConfigError, match="--listen"):
            StubConfig(listen=bad)
    with pytest.raises(ConfigError, match="--runner-id"):
        StubConfig(listen="127.0.0.1:20000-20001", runner_id="r1")


async def test_a_port_range_serves_independent_runners(
        group: ProcGroup, channel_to: object) -> None:
    host = start_host(group, 3, ["--slots", "1", "--nack-after-ms", "0"])
    a, b, c = (channel_to(addr) for addr in host.addrs)  # type: ignore[operator]
    assert [(await status(r)).runner_id for r in (a, b, c)] == host.addrs
    hold = asyncio.create_task(exec_call(a, new_call(config={"sleep_ms": "1500"})))
    await wait_until(_slots_free_is(a, 0), what="a's only slot taken")
    # a is full; b, its neighbour in the same process, is not.
    (await exec_call(b, new_call())).assert_ok()
    assert (await exec_call(a, new_call())).nacked
    (await hold).assert_ok()
    sa, sb, sc = [await status(r) for r in (a, b, c)]
    assert (sa.requestsReceived, sa.requestsHandled, sa.requestsNacked) == (2, 1, 1)
    assert (sb.requestsReceived, sb.requestsHandled, sb.requestsNacked) == (1, 1, 0)
    assert (sc.requestsReceived, sc.requestsHandled) == (0, 0)
    assert custom(sc, "status_calls") == 2


def _slots_free_is(runner: runner_pb2_grpc.RunnerStub, n: int) -> object:
    async def check() -> bool:
        return (await status(runner)).slots_free == n
    return check


# -- the poll budget ------------------------------------------------------------------


async def _status_calls(stubs: list[runner_pb2_grpc.RunnerStub]) -> int:
    answers = await asyncio.gather(*(status(s) for s in stubs))
    return sum(custom(a, "status_calls") for a in answers)


async def test_the_lb_polls_within_its_budget(
        group: ProcGroup, channel_to: object, tmp_path: Path) -> None:
    n, rate = 60, 10.0  # every 1 s would be 60 polls/s; the budget is 10
    host = start_host(group, n, ["--watch", "false"])  # runners that must be polled
    runners_file = tmp_path / "runners.txt"
    write_runners(runners_file, host.addrs)
    lb = start_lb(group, runners_file, ["--health-interval", "1s",
                                        "--health-poll-rate", f"{rate:g}",
                                        "--runner-idle-close", "0"])
    await wait_until(lambda: healthy(lb) >= n, within=30, what="every runner healthy")
    stubs = [channel_to(addr) for addr in host.addrs]  # type: ignore[operator]
    before, t0 = await _status_calls(stubs), time.monotonic()
    await asyncio.sleep(6)  # the measurement window, not a synchronisation
    after, t1 = await _status_calls(stubs), time.monotonic()
    polls = after - before - n  # our own second round of Status calls
    expected = rate * (t1 - t0)
    assert 0.5 * expected <= polls <= 1.3 * expected + 5, (polls, expected)


# -- idle channels ----------------------------------------------------------------------


def _connections_to(port: int) -> set[int]:
    """Local ports of established TCP connections to ``port`` (the dialling side; gRPC
    dials from IPv6 sockets with IPv4-mapped addresses, so both tables count)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


async def test_park_if_idle_closes_the_connection_and_a_call_dials_again(
        group: ProcGroup) -> None:
    host = start_host(group, 1)
    addr = host.addrs[0]
    port = int(addr.rsplit(":", 1)[1])
    # calls=False: a channel that carried a Runner/Calls stream keeps its TCP
    # connection after close() (seen with GrpcRunner.close() too, before idle
    # closing existed); Runner/Call and TryExec channels close cleanly.
    runner = GrpcRunner(addr, calls=False)
    try:
        await runner.refresh()
        assert (await runner.try_exec(make_call())).placed
        await wait_until(lambda: len(_connections_to(port)) == 1, what="one connection")
        first = _connections_to(port)
        assert not await runner.park_if_idle(time.monotonic(), idle=60)  # not idle yet
        assert await runner.park_if_idle(time.monotonic() + 61, idle=60)
        assert runner.parked
        await wait_until(lambda: not _connections_to(port), what="the connection closed")
        # A poll meanwhile uses a one-off channel and leaves the runner parked.
        assert (await runner.status()).runner_id == addr and runner.parked
        result = await runner.try_exec(make_call())
        assert result.placed and result.error is None and not runner.parked
        again = _connections_to(port)
        assert again and not again & first  # a new connection
    finally:
        await runner.close()


async def test_an_idle_runner_channel_is_closed_and_redialled_on_demand(
        group: ProcGroup, tmp_path: Path) -> None:
    host = start_host(group, 1)
    port = int(host.addrs[0].rsplit(":", 1)[1])
    runners_file = tmp_path / "runners.txt"
    write_runners(runners_file, host.addrs)
    lb = start_lb(group, runners_file, ["--runner-idle-close", "1s",
                                        "--health-interval", "30s"])
    await wait_until(lambda: healthy(lb) >= 1, within=30, what="the runner healthy")
    async with grpc.aio.insecure_channel(lb.addr) as ch:
        front = lb_pb2_grpc.LoadBalancerStub(ch)
        reply = await front.Invoke(lb_pb2.InvokeRequest(fn_id="echo", body=b"one"), timeout=10)
        assert reply.body == b"one"
        before = _connections_to(port)
        assert before
        start = len(lb.read_lines())
        await asyncio.to_thread(lb.wait_for_line, "closed idle runner channels", 15, start)
        # The next call dials again, transparently, on a new connection.
        reply = await front.Invoke(lb_pb2.InvokeRequest(fn_id="echo", body=b"two"), timeout=10)
        assert reply.body == b"two" and reply.runner == host.addrs[0]
        assert _connections_to(port) - before
