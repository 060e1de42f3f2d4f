"""Phases, attempts, trace trailers and the access log, piece by piece (fnlb.phases,
fnlb.access); the stub's reported start-up times. End to end: test_phases_e2e.py."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from fnlb.access import AccessLog
from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    DoesNotFit,
    PassedOn,
    PoolError,
    RunnerError,
    RunnerUnreachable,
    ServerTooBusy,
)
from fnlb.phases import (
    PHASES,
    AttemptRecord,
    CallTimings,
    attempt_outcome,
    format_attempts,
    format_phases,
    parse_phases,
    runner_phases,
    trace_wanted,
)
from fnlb.v1 import runner_pb2 as pb
from fnlb.v1 import runner_pb2_grpc
from runner_stub import StubConfig, StubServer
from tests.fakes import Clock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MS = 1_000_000  # ns


@pytest.mark.parametrize(("placed", "error", "outcome"), [
    (True, None, "committed"),
    (True, RunnerError("boom"), "committed"),  # taken, then failed: still the commit
    (True, ClientTimeout(), "timeout"),
    (True, ClientCanceled(), "timeout"),
    (False, ServerTooBusy(), "nack"),
    (False, PassedOn("slow start"), "passed"),
    (False, RunnerUnreachable("down"), "unreachable"),
    (False, DoesNotFit("too big"), "does_not_fit"),
    (False, PoolError("no pool"), "error"),
])
def test_attempt_outcome(placed: bool, error: BaseException | None, outcome: str) -> None:
    assert attempt_outcome(placed, error) == outcome


@pytest.mark.parametrize(("fields", "expected"), [
    # fn's runner: the scheduler wait covers the pull and the cold start; they come out.
    (dict(scheduler_ns=700 * MS, execution_ns=200 * MS, image_pull_ns=400 * MS,
          prep_ns=50 * MS, create_ns=100 * MS, init_ns=50 * MS),
     (0.1, 0.2, 0.4, 0.2)),
    # No durations: the timestamps (createdAt -> startedAt -> completedAt).
    (dict(created=T0, started=T0 + timedelta(milliseconds=30),
          completed=T0 + timedelta(milliseconds=80)),
     (0.03, 0.0, 0.0, 0.05)),
    # Timestamps out of order give no wait (execution is still startedAt -> completedAt).
    (dict(created=T0 + timedelta(seconds=1), started=T0, completed=T0),
     (None, 0.0, 0.0, 0.0)),
    # A runner reporting less scheduler wait than start-up: the wait is 0, never negative.
    (dict(scheduler_ns=10 * MS, image_pull_ns=40 * MS), (0.0, 0.0, 0.04, None)),
    # Negative durations from a confused runner count as 0.
    (dict(scheduler_ns=5 * MS, image_pull_ns=-1, create_ns=-5), (0.005, 0.0, 0.0, None)),
])
def test_runner_phases(fields: dict[str, object], expected: tuple[float | None, ...]) -> None:
    args: dict[str, object] = dict(scheduler_ns=0, execution_ns=0, image_pull_ns=0, prep_ns=0,
                                   create_ns=0, init_ns=0, created=None, started=None,
                                   completed=None)
    args.update(fields)
    got = runner_phases(**args)  # type: ignore[arg-type]
    assert [None if g is None else pytest.approx(g) for g in got] == list(expected)


def _timings() -> tuple[CallTimings, Clock]:
    clock = Clock(100.0)
    return CallTimings(clock.now, clock=clock), clock


def test_breakdown_of_a_call_that_queued_was_nacked_and_ran() -> None:
    t, clock = _timings()
    clock.now += 0.001  # into the placer
    t.queued(0.050)
    clock.now += 0.050
    tried = clock.now
    clock.now += 0.002
    t.attempted("r1", False, ServerTooBusy(), tried)
    tried = clock.now
    clock.now += 0.5  # the runner ran it: 0.1 wait, 0.4 execution
    t.finished(runner_phases(scheduler_ns=100 * MS, execution_ns=400 * MS, image_pull_ns=0,
                             prep_ns=0, create_ns=0, init_ns=0, created=None, started=None,
                             completed=None))
    t.responded()
    t.attempted("r2", True, None, tried)
    t.ended("completed", "r2")
    clock.now += 0.003  # to the client
    end = t.over()
    assert end == clock.now and t.over() is None  # once
    phases = t.breakdown(end)
    assert phases == pytest.approx({"queue": 0.05, "placement": 0.003, "runner_wait": 0.1,
                                    "execution": 0.4, "transfer": 0.003})
    assert sum(phases.values()) == pytest.approx(end - t.start)
    assert [(a.runner, a.outcome) for a in t.trail()] == [("r1", "nack"), ("r2", "committed")]


def test_breakdown_without_a_commit_is_all_placement() -> None:
    t, clock = _timings()
    for _ in range(3):
        tried = clock.now
        clock.now += 0.1
        t.attempted("r1", False, ServerTooBusy(), tried)
    t.ended("server_busy", "")
    end = t.over()
    assert end is not None
    assert t.breakdown(end) == pytest.approx({"placement": 0.3})


def test_transfer_counts_from_finished_when_no_result_came() -> None:
    t, clock = _timings()
    t.attempted("r1", True, None, clock.now)
    clock.now += 0.2
    t.finished(runner_phases(scheduler_ns=0, execution_ns=0, image_pull_ns=0, prep_ns=0,
                             create_ns=0, init_ns=0, created=None, started=None,
                             completed=None))
    clock.now += 0.01
    end = t.over()
    assert end is not None
    assert t.breakdown(end) == pytest.approx({"placement": 0.0, "transfer": 0.01})


def test_trail_keeps_first_and_last_attempts() -> None:
    t, clock = _timings()
    for i in range(40):
        t.attempted(f"r{i}", i == 39, None if i == 39 else ServerTooBusy(), clock.now)
    trail = t.trail()
    assert len(trail) == 17 and trail[8] == 24
    first, last = trail[:8], trail[9:]
    assert [a.runner for a in first] == [f"r{i}" for i in range(8)]  # type: ignore[union-attr]
    assert [a.runner for a in last] == [f"r{i}" for i in range(32, 40)]  # type: ignore[union-attr]
    text = format_attempts(trail)
    assert ", +24 more, " in text and text.endswith("r39 committed 0.0ms")


def test_trailer_formats() -> None:
    assert format_attempts([AttemptRecord("10.0.0.1:9190", "nack", 0.0008),
                            AttemptRecord("10.0.0.2:9190", "committed", 0.2051)]) == (
        "10.0.0.1:9190 nack 0.8ms, 10.0.0.2:9190 committed 205.1ms")
    # Long (or non-ASCII) addresses are cut and made printable ASCII: bounded trailers.
    entry = format_attempts([AttemptRecord("é" * 200, "nack", 0.001)])
    assert entry.isascii() and len(entry) < 80
    text = format_phases({"placement": 0.0012, "execution": 0.2}, 0.2015)
    assert text.startswith("queue=0.0, placement=1.2, runner_wait=0.0")
    parsed = parse_phases(text)
    assert list(parsed) == [*PHASES, "total"]
    assert parsed["execution"] == 200.0 and parsed["total"] == 201.5


@pytest.mark.parametrize(("metadata", "wanted"), [
    ((("fnlb-trace", "1"),), True),
    ((("user-agent", "x"), ("fnlb-trace", "true")), True),
    ((("fnlb-trace", "0"),), False),
    ((), False),
    (None, False),
])
def test_trace_wanted(metadata: tuple[tuple[str, str], ...] | None, wanted: bool) -> None:
    assert trace_wanted(metadata) is wanted


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.summary = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if "suppressed" in record.getMessage():
            self.summary.set()


def _access(rate: float, every: float = 10.0, enabled: bool = True,
            ) -> tuple[AccessLog, Clock, _Lines, CollectorRegistry]:
    logger = logging.getLogger("tests.access")
    logger.setLevel(logging.INFO)
    lines = _Lines()
    logger.handlers[:] = [lines]
    logger.propagate = False
    registry = CollectorRegistry()
    counter = Counter("suppressed", "", registry=registry)
    clock = Clock()
    log = AccessLog(enabled=enabled, rate=rate, suppressed=counter, summary_every=every,
                    clock=clock, logger=logger)
    return log, clock, lines, registry


def _suppressed(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("suppressed_total") or 0.0


async def test_access_log_rate_limit_refills_per_second() -> None:
    log, clock, lines, registry = _access(rate=3)
    admitted = [log.admit() for _ in range(5)]
    assert admitted == [True, True, True, False, False]
    clock.now += 0.5  # 1.5 lines' worth
    assert [log.admit() for _ in range(3)] == [True, False, False]
    clock.now += 10  # refills to the burst, never beyond
    assert sum(log.admit() for _ in range(10)) == 3
    assert _suppressed(registry) == log.suppressed == 2 + 2 + 7
    log.summarize()  # what the timer does
    assert lines.records[-1].getMessage() == "access log: 11 lines suppressed"
    assert log.suppressed == 0


async def test_access_log_summary_comes_by_itself_and_off_writes_nothing() -> None:
    log, clock, lines, _ = _access(rate=1, every=0.05)
    log.write(call_id="a")
    assert log.admit() and not log.admit() and not log.admit()
    await asyncio.wait_for(lines.summary.wait(), 5)
    assert [r.getMessage() for r in lines.records] == ["call",
                                                       "access log: 2 lines suppressed"]
    assert lines.records[0].kv == {"call_id": "a"}  # type: ignore[attr-defined]
    off, _, _, off_registry = _access(rate=0, enabled=False)
    assert not off.admit() and _suppressed(off_registry) == 0
    unlimited, _, _, _ = _access(rate=0)
    assert all(unlimited.admit() for _ in range(10_000))


def test_access_log_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        AccessLog(rate=-1)


async def test_stub_pulls_each_image_once_and_reports_start_up() -> None:
    cfg = StubConfig(listen="127.0.0.1:0", slots=4, image_pull_ms=150, cold_start_ms=60)
    async with StubServer(cfg) as server, grpc.aio.insecure_channel(server.addr) as ch:
        runner = runner_pb2_grpc.RunnerStub(ch)

        async def call(fn_id: str, image: str) -> pb.CallFinished:
            text = json.dumps({"id": fn_id, "fn_id": fn_id, "image": image, "memory": 64})
            req = pb.CallRequest(**{"try": pb.TryCall(models_call_json=text)})  # type: ignore[arg-type]
            reply = await runner.Call(req, timeout=10)
            return reply.finished

        # Two functions of one image at once: both wait for the one pull.
        a, b = await asyncio.gather(call("a", "img:1"), call("b", "img:1"))
        for f in (a, b):
            assert 0 < f.imagePullWaitDuration <= 300 * MS
            assert f.ctrCreateDuration >= 60 * MS
            assert f.schedulerDuration >= f.imagePullWaitDuration + f.ctrCreateDuration
        assert max(a.imagePullWaitDuration, b.imagePullWaitDuration) >= 150 * MS
        c = await call("c", "img:1")  # cached image, cold function
        assert c.imagePullWaitDuration == 0 and c.ctrCreateDuration >= 60 * MS
        again = await call("a", "img:1")  # warm function
        assert again.imagePullWaitDuration == 0 and again.ctrCreateDuration == 0
        other = await call("d", "img:2")
        assert other.imagePullWaitDuration >= 150 * MS
        await server.stop(0)
