"""Runner/Watch and the piggyback (runner.proto, THE WATCH / THE PIGGYBACK).

The stub's side is read by a real gRPC client on an in-process ``StubServer``;
the LB's side is a real ``DynamicRunnerPool`` with ``GrpcRunner``s against
stubs in process, or (to be SIGKILLed) in their own process. Waits are on
events and states, never on sleeps; time bounds are generous backstops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from fnlb.calls import LBCall
from fnlb.harness import start, wait_until
from fnlb.metrics import Metrics
from fnlb.placers import make_placer
from fnlb.pools import DynamicRunnerPool, StaticSource
from fnlb.pools.health import HealthConfig
from fnlb.pools.watch import WATCH_FEATURE
from fnlb.runnerpool import CallModel, RunnerStatus
from fnlb.tls import ClientTLS
from fnlb.transport import GrpcRunner
from fnlb.v1 import runner_pb2, runner_pb2_grpc
from runner_stub import StubConfig, StubServer


def _try(fn_id: str = "f", sleep_ms: int = 0, memory: int = 128) -> runner_pb2.TryCall:
    model = {"id": f"c-{time.monotonic_ns()}", "fn_id": fn_id, "app_id": "a", "type": "sync",
             "timeout": 30, "memory": memory, "config": {"sleep_ms": str(sleep_ms)}}
    return runner_pb2.TryCall(models_call_json=json.dumps(model), slot_hash_id=fn_id)


def _call(fn_id: str = "f", sleep_ms: int = 0, memory: int = 128) -> runner_pb2.CallRequest:
    return runner_pb2.CallRequest(**{"try": _try(fn_id, sleep_ms, memory)})  # type: ignore[arg-type]


@pytest.fixture
async def raw() -> AsyncIterator[runner_pb2_grpc.RunnerStub]:
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=4, memory_mb=1024,
                                     nack_after_ms=20_000, status_min_interval=0.25,
                                     watch_heartbeat=0.5)) as s, \
            grpc.aio.insecure_channel(s.addr) as ch:
        yield runner_pb2_grpc.RunnerStub(ch)


# -- the stub's side ----------------------------------------------------------------


async def test_watch_sends_the_status_at_once_then_heartbeats(
        raw: runner_pb2_grpc.RunnerStub) -> None:
    status = await raw.Status(runner_pb2.google_dot_protobuf_dot_empty__pb2.Empty())
    assert WATCH_FEATURE in status.features
    stream = raw.Watch(runner_pb2.WatchRequest())
    first = await stream.read()
    t0 = time.monotonic()
    assert (first.slots_total, first.slots_free, first.watch_heartbeat_ms,
            first.watch_min_interval_ms) == (4, 4, 500, 250)
    second = await stream.read()  # nothing changed: the heartbeat
    assert time.monotonic() - t0 >= 0.4
    assert second.slots_free == 4
    stream.cancel()


async def test_watch_asks_for_a_shorter_heartbeat(raw: runner_pb2_grpc.RunnerStub) -> None:
    stream = raw.Watch(runner_pb2.WatchRequest(heartbeat_ms=300))
    first = await stream.read()
    assert first.watch_heartbeat_ms == 300
    stream.cancel()


async def test_changes_are_coalesced_to_one_message_per_interval(
        raw: runner_pb2_grpc.RunnerStub) -> None:
    """40 calls (80 slot changes, a warm set change) within about a second: a few
    messages, never two within one interval, the last one telling the end state."""
    stream = raw.Watch(runner_pb2.WatchRequest(heartbeat_ms=60_000))
    await stream.read()
    seen: list[tuple[float, runner_pb2.RunnerStatus]] = []
    settled = asyncio.Event()

    async def receive() -> None:
        while True:
            msg = await stream.read()
            seen.append((time.monotonic(), msg))
            if msg.slots_free == 4 and "hot" in msg.warm_slots and msg.active == 0:
                settled.set()

    receiver = asyncio.create_task(receive())
    replies = await asyncio.gather(*(raw.Call(_call("hot", sleep_ms=20)) for _ in range(40)))
    assert all(r.finished.success for r in replies)
    await asyncio.wait_for(settled.wait(), 10)
    receiver.cancel()
    stream.cancel()
    times = [t for t, _ in seen]
    span = times[-1] - times[0]
    # At most one per 250 ms (one more for timing noise at either end)...
    assert len(seen) <= span / 0.25 + 2, [round(t - times[0], 3) for t in times]
    # ... far fewer than the changes they carried.
    assert len(seen) < 20


async def test_stub_without_watch_does_not_list_or_serve_it() -> None:
    async with StubServer(StubConfig(listen="127.0.0.1:0", watch=False)) as s, \
            grpc.aio.insecure_channel(s.addr) as ch:
        stub = runner_pb2_grpc.RunnerStub(ch)
        status = await stub.Status(runner_pb2.google_dot_protobuf_dot_empty__pb2.Empty())
        assert WATCH_FEATURE not in status.features
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Watch(runner_pb2.WatchRequest()).read()
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_every_finished_piggybacks_free_slots_and_memory(
        raw: runner_pb2_grpc.RunnerStub) -> None:
    reply = await raw.Call(_call(memory=256))
    # Written while the call still held its slot and memory.
    assert reply.finished.HasField("slots_free")
    assert (reply.finished.slots_free, reply.finished.memory_mb_free) == (3, 1024 - 256)
    tryexec = raw.TryExec()
    await tryexec.write(runner_pb2.ClientMsg(**{"try": _try(memory=512)}))  # type: ignore[arg-type]
    await tryexec.write(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(eof=True)))
    async for msg in tryexec:
        if msg.WhichOneof("body") == "finished":
            assert (msg.finished.slots_free, msg.finished.memory_mb_free) == (3, 512)


# -- the LB's side --------------------------------------------------------------------


class CountingRunner(GrpcRunner):
    """The real GrpcRunner, counting the Status polls the pool makes."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.polls = 0

    async def refresh(self, timeout: float = 2.0) -> RunnerStatus:
        self.polls += 1  # the prober's poll step
        return await super().refresh(timeout)


def _factory(made: dict[str, CountingRunner]):  # type: ignore[no-untyped-def]
    def make(address: str, tls: ClientTLS | None) -> CountingRunner:
        made[address] = CountingRunner(address)
        return made[address]
    return make


def _pool(addresses: Sequence[str], made: dict[str, CountingRunner],
          **health: float) -> DynamicRunnerPool:
    cfg = HealthConfig(**{"interval": 0.1, "timeout": 1.0, "slow_start": 0,
                          "backoff_base": 0.05, **health})  # type: ignore[arg-type]
    return DynamicRunnerPool(_factory(made), sources=[StaticSource(list(addresses))],
                             health=cfg, metrics=Metrics())


def _member(pool: DynamicRunnerPool, address: str):  # type: ignore[no-untyped-def]
    return next(m for m in pool._members if m.address == address)


def _offered(pool: DynamicRunnerPool) -> set[str]:
    return {r.address for r in pool.snapshot()}


async def test_lb_watches_runners_that_list_watch_and_polls_the_others() -> None:
    made: dict[str, CountingRunner] = {}
    async with StubServer(StubConfig(listen="127.0.0.1:0", watch_heartbeat=0.2)) as new, \
            StubServer(StubConfig(listen="127.0.0.1:0", watch=False)) as old, \
            _pool([new.addr, old.addr], made) as pool:
        await wait_until(lambda: _member(pool, new.addr).watched, 10, "watching new")
        assert not _member(pool, old.addr).watched
        assert pool.watcher.streams() == 1
        polls_new, polls_old = made[new.addr].polls, made[old.addr].polls
        heard = new.service.feed.sent
        # Polls go on for the old runner; the watched one sends heartbeats instead.
        await wait_until(lambda: made[old.addr].polls >= polls_old + 5
                         and new.service.feed.sent >= heard + 2, 10, "polls and heartbeats")
        assert made[new.addr].polls == polls_new
        assert _offered(pool) == {new.addr, old.addr}
        # The pushed status is the LB's report: fresh, with the runner's slots.
        report = pool.load.report(new.addr)
        assert report is not None and report.slots_total == 4


async def test_pushed_status_feeds_load_and_warm_sets() -> None:
    """A change on the runner (a warm function, slots taken by another LB) reaches the
    LB's tracker through the watch, with no poll."""
    made: dict[str, CountingRunner] = {}
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=4, watch_heartbeat=60)) as s, \
            grpc.aio.insecure_channel(s.addr) as ch, _pool([s.addr], made) as pool:
        await wait_until(lambda: _member(pool, s.addr).watched, 10, "watching")
        polls = made[s.addr].polls
        other_lb = runner_pb2_grpc.RunnerStub(ch)
        await other_lb.Call(_call("warm-me"))
        held = [other_lb.Call(_call("busy", sleep_ms=5_000)) for _ in range(2)]
        await wait_until(lambda: pool.load.warm_for(s.addr, "warm-me")
                         and pool.load.load(s.addr) == 2, 10, "pushed load and warm set")
        assert made[s.addr].polls == polls
        for t in held:
            t.cancel()
        await wait_until(lambda: pool.load.load(s.addr) == 0, 10, "slots freed")


async def test_piggybacked_load_reaches_the_lb_without_status_polls() -> None:
    made: dict[str, CountingRunner] = {}
    # A runner polled (no watch) once, then not again for a minute.
    async with StubServer(StubConfig(listen="127.0.0.1:0", slots=4, watch=False)) as s, \
            grpc.aio.insecure_channel(s.addr) as ch, \
            _pool([s.addr], made, interval=60.0) as pool:
        await wait_until(lambda: pool.load.report(s.addr) is not None, 10, "first poll")
        assert made[s.addr].polls == 1 and pool.load.load(s.addr) == 0
        other_lb = runner_pb2_grpc.RunnerStub(ch)
        held = [other_lb.Call(_call("busy", sleep_ms=5_000)) for _ in range(2)]
        await wait_until(lambda: s.service.pool.slots_free == 2, 10, "other LB's calls")
        placer = make_placer("p2c", load=pool.load)
        call = LBCall(CallModel(id="ours", fn_id="f"), b"hi")
        runner = await placer.place_call(pool, call)
        assert runner.address == s.addr
        # Our reply said: 3 slots taken (ours too). Ours is over: 2 are the other LB's.
        assert pool.load.load(s.addr) == 2
        assert pool.load.has_room(s.addr) is True
        assert made[s.addr].polls == 1
        for t in held:
            t.cancel()


async def test_killed_runner_stops_getting_calls_at_once_with_watch() -> None:
    made: dict[str, CountingRunner] = {}
    doomed = start("runner_stub", ["--listen", "127.0.0.1:0"])
    try:
        async with StubServer(StubConfig(listen="127.0.0.1:0")) as alive, \
                _pool([doomed.addr, alive.addr], made, interval=30.0) as pool:
            # Polls every 30 s: only the watch can notice within the bound below.
            await wait_until(lambda: all(m.watched for m in pool._members), 10, "watching")
            assert _offered(pool) == {doomed.addr, alive.addr}
            killed = time.monotonic()
            doomed.signal(signal.SIGKILL)
            await wait_until(lambda: _offered(pool) == {alive.addr}, 5, "dead runner dropped")
            noticed = time.monotonic() - killed
            assert noticed < 2.0, noticed
            assert _member(pool, doomed.addr).state() == "suspect"
            placer = make_placer("naive", load=pool.load)
            for i in range(10):
                runner = await placer.place_call(pool, LBCall(CallModel(id=f"c{i}", fn_id="f"),
                                                              b""))
                assert runner.address == alive.addr
    finally:
        doomed.stop()


async def test_broken_watch_falls_back_to_polls_then_watches_again(fixed_port: int) -> None:
    made: dict[str, CountingRunner] = {}
    addr = f"127.0.0.1:{fixed_port}"
    async with _pool([addr], made) as pool:
        m = _member(pool, addr)
        server = StubServer(StubConfig(listen=addr))
        await server.start()
        await wait_until(lambda: m.watched, 10, "watching")
        await server.stop(0)  # ends the Watch stream with OK: "going away"
        await wait_until(lambda: m.state() == "suspect", 5, "lost with the watch")
        assert not m.watched
        # The same address comes back as a runner without watch: polled.
        async with StubServer(StubConfig(listen=addr, watch=False)):
            await wait_until(lambda: m.state() == "healthy", 10, "polled again")
            polls = made[addr].polls
            await wait_until(lambda: made[addr].polls >= polls + 3, 10, "polls go on")
            assert not m.watched and pool.watcher.streams() == 0
        await wait_until(lambda: m.state() == "suspect", 10, "gone again")
        # ... and once more with watch: watched again.
        async with StubServer(StubConfig(listen=addr)):
            await wait_until(lambda: m.watched and m.state() == "healthy", 10, "watched again")
    assert pool.watcher.streams() == 0


async def test_streams_end_when_runners_leave_the_pool() -> None:
    """Per-runner state of the watch goes with the member: no stream, no table left."""
    made: dict[str, CountingRunner] = {}
    async with StubServer(StubConfig(listen="127.0.0.1:0")) as a, \
            StubServer(StubConfig(listen="127.0.0.1:0")) as b, _pool([], made) as pool:
        for round_ in range(2):
            pool.add(a.addr)
            pool.add(b.addr)
            await wait_until(lambda: pool.watcher.streams() == 2
                             and all(m.watched for m in pool._members), 10, "watching both")
            assert pool.remove(a.addr) and pool.remove(b.addr)
            await pool.closes_done()
            await wait_until(lambda: pool.watcher.streams() == 0
                             and a.service.feed.watchers == 0
                             and b.service.feed.watchers == 0, 10, f"streams gone ({round_})")
            assert pool.member_count() == (0, 0)
            assert pool.load.table_sizes() == (0, 0, 0)


def test_piggybacked_free_slots_update_the_last_report() -> None:
    from fnlb.placers.load import LoadTracker
    from tests.fakes import Clock

    clock = Clock()
    load = LoadTracker(fresh_for=1.0, clock=clock)
    load.update_free("r", 1, 100)  # no report yet: nothing to merge with
    assert load.report("r") is None
    load.update_reported("r", RunnerStatus(active=0, slots_total=4, slots_free=4))
    heard: list[str] = []
    load.subscribe_reports(heard.append)
    load.started("r")
    clock.now += 0.9
    load.update_free("r", 1, 100)  # 3 taken, one of them ours: 2 are others'
    assert (load.load("r"), load.total_load(), heard) == (3, 3, [])
    clock.now += 0.9  # fresh again from the piggyback, though the Status is 1.8 s old
    assert load.has_room("r") is True
    load.finished("r")
    assert load.load("r") == 2
    load.update_free("r", 4, 1024)  # the others' calls ended: room, say so
    assert (load.load("r"), heard) == (0, ["r"])
    # A watched runner's report holds as long as it says.
    load.update_reported("w", RunnerStatus(slots_total=2, slots_free=2), fresh_for=11.0)
    clock.now += 10
    assert load.report("w") is not None and load.report("r") is None
    clock.now += 2
    assert load.report("w") is None


def test_stub_watch_flags() -> None:
    from fnlb.errors import ConfigError
    from runner_stub.cli import parse_config

    cfg = parse_config(["--watch", "false", "--status-min-interval", "50ms",
                        "--watch-heartbeat", "2s"], environ={})
    assert (cfg.watch, cfg.status_min_interval, cfg.watch_heartbeat) == (False, 0.05, 2.0)
    assert parse_config([], environ={"RUNNER_STUB_WATCH": "0"}).watch is False
    with pytest.raises(ConfigError, match="--watch-heartbeat"):
        StubConfig(status_min_interval=1.0, watch_heartbeat=0.5)


async def test_watched_runner_in_doubt_is_polled_until_it_answers() -> None:
    """A watched runner turned suspect by placement (here: a try unanswered past the
    accept timeout) is polled at once, not left to its next heartbeat (60 s away)."""
    made: dict[str, CountingRunner] = {}
    async with StubServer(StubConfig(listen="127.0.0.1:0", watch_heartbeat=60)) as s, \
            _pool([s.addr], made) as pool:
        m = _member(pool, s.addr)
        await wait_until(lambda: m.watched, 10, "watching")
        polls = made[s.addr].polls
        made[s.addr].on_unanswered("no answer to the try")  # what GrpcRunner reports
        assert m.state() == "suspect"
        await wait_until(lambda: m.state() == "healthy", 5, "a poll's answer")
        assert made[s.addr].polls > polls and m.watched


async def test_an_idle_watched_runner_is_released_quietly_then_watched_after_a_call(
        caplog: pytest.LogCaptureFixture) -> None:
    """--runner-idle-close: the watch ends without doubting the runner (polls take
    over), and once a call has reopened the channel the next poll watches again."""
    caplog.set_level(logging.INFO, logger="fnlb")
    made: dict[str, CountingRunner] = {}
    async with StubServer(StubConfig(listen="127.0.0.1:0", watch_heartbeat=60)) as s, \
            _pool([s.addr], made, idle_close=0.3) as pool:
        runner = made[s.addr]
        await wait_until(lambda: _member(pool, s.addr).watched, 10, "watching")
        await wait_until(lambda: runner.parked, 10, "idle channel closed")
        m = _member(pool, s.addr)
        assert not m.watched and m.up is True and _offered(pool) == {s.addr}
        polls = runner.polls
        await wait_until(lambda: runner.polls >= polls + 2, 10, "polled while idle")
        assert not m.watched and runner.parked  # the polls did not reopen it
        # Never doubted: no "stream ended, runner may be gone", no suspect.
        doubts = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not doubts, doubts
        placer = make_placer("naive", load=pool.load)
        await placer.place_call(pool, LBCall(CallModel(id="wake", fn_id="f"), b"hi"))
        await wait_until(lambda: m.watched, 10, "watched again after the call")
