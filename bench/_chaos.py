"""Fault scenarios against real processes, shared by ``tests/test_chaos.py`` and ``bench.faults``.

Each scenario starts (or is given) an LB and runner stubs, drives calls with a
unique ``call_id`` each, injects one fault, lets everything settle and returns
what happened, seen three ways:

* the client's: every call's send/end time, gRPC code, runner (``CallRecord``);
* the runners' own: their ``--log-level debug`` lines name every call they
  accepted (``msg="call accepted"``) and every function they started
  (``msg="function started"``), and ``msg="call canceled"`` at info; a killed
  runner's lines are kept (``Cluster.history``), so a call run twice shows up.
  A call "never accepted" is one no runner logged accepting before the client
  had its failure: a hung or cut-off runner reads calls late, after the LB gave
  up on them, and accepts them then (and cancels them a moment later);
* the LB's: Admin ``ListRunners`` sampled every 50 ms (``PoolSampler``).
  ``placed + inflight`` of a runner only rises when an attempt on it begins
  (an attempt that ends committed moves 1 from inflight to placed, one that
  ends unplaced or at the client's deadline just leaves inflight), so the last
  rise after a fault is when the LB last sent a call there.

The tests run them briefly and assert; ``bench.faults`` runs them longer and
prints the issue-13 targets. Every loop is bounded in count and time, and
every process is stopped, whatever fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import statistics
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from google.protobuf import empty_pb2

from fnlb._netns import NetNs
from fnlb.harness import Proc, ProcGroup, parse_logfmt, reserved_port
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2_grpc

__all__ = ["CallRecord", "Cluster", "DeadRunnersResult", "DetachedResult", "KillLoopResult",
           "PartitionResult", "PoolSampler", "StopResult", "SyncTermResult", "cluster",
           "dead_runners", "detached_sigterm", "partition", "runner_calls", "sigkill_loop",
           "sigstop", "sync_sigterm"]

STARTED = "function started"
ACCEPTED = "call accepted"
CANCELED = "call canceled"
_SETTLE_S = 15.0  # longest wait for runners and the LB to report nothing in flight


# -- processes ---------------------------------------------------------------------


@dataclass
class Cluster:
    """An LB and its runner stubs; ``history`` keeps every runner process ever started."""

    lb: Proc
    stubs: list[Proc]
    group: ProcGroup
    ns: NetNs | None = None
    stub_args: tuple[str, ...] = ()
    history: list[Proc] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return self.lb.fields["admin_addr"]

    def restart(self, i: int) -> Proc:
        """Start runner ``i`` again at its address (after it died); the old one stays in history."""
        old = self.stubs[i]
        old.close()
        proc = self.group.start("runner_stub", ["--listen", old.addr, *self.stub_args],
                                name=f"runner{i}")
        self.stubs[i] = proc
        self.history.append(proc)
        return proc


@contextlib.contextmanager
def cluster(local: int, *, in_netns: NetNs | None = None, fixed_port: bool = False,
            stub_args: Sequence[str] = (), lb_args: Sequence[str] = (),
            extra_runners: Sequence[str] = ()) -> Iterator[Cluster]:
    """``local`` stubs on 127.0.0.1 (the first on a reserved port if ``fixed_port``),
    one more inside ``in_netns`` if given (last in ``stubs``), and an LB over them all.

    Stubs log at debug level: the run counts come from their lines.
    """
    args = ("--log-level", "debug", *stub_args)
    with contextlib.ExitStack() as stack:
        group = stack.enter_context(ProcGroup(drain=False))
        port = stack.enter_context(reserved_port()) if fixed_port else 0
        for i in range(local):
            group.spawn("runner_stub", ["--listen", f"127.0.0.1:{port if i == 0 else 0}", *args],
                        name=f"runner{i}")
        stubs = [p.wait_ready() for p in list(group.procs)]
        if in_netns is not None:
            stubs.append(in_netns.start("runner_stub", ["--listen", f"{in_netns.ns_ip}:0", *args],
                                        name=f"runner{local}@{in_netns.name}"))
        lb = group.start("fnlb", [
            "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--drain-grace", "10s",
            "--runners", ",".join([*(s.addr for s in stubs), *extra_runners]), *lb_args],
            name="lb")
        yield Cluster(lb, stubs, group, in_netns, args, history=list(stubs))


def _wall(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def first_logged(procs: Iterable[Proc], msg: str) -> dict[str, float]:
    """When (wall clock, ms resolution) a runner first logged ``msg`` for each call id."""
    first: dict[str, float] = {}
    needle = f'msg="{msg}"' if " " in msg else f"msg={msg}"
    for proc in procs:
        for line in proc.read_lines():
            if needle in line:
                fields = parse_logfmt(line)
                cid, t = fields.get("call_id", ""), _wall(fields["ts"])
                first[cid] = min(t, first.get(cid, t))
    return first


def never_accepted(procs: Iterable[Proc], failed: Iterable[CallRecord]) -> list[str]:
    """Failed calls that no runner had accepted by the time the client saw the failure."""
    accepted = first_logged(procs, ACCEPTED)
    # Log lines have millisecond timestamps: one ms of slack toward "accepted".
    return [r.call_id for r in failed
            if accepted.get(r.call_id, float("inf")) > r.ended_wall + 0.001]


def runner_calls(procs: Iterable[Proc], msg: str) -> collections.Counter[str]:
    """How many times the runners logged ``msg`` for each call id."""
    counts: collections.Counter[str] = collections.Counter()
    needle = f'msg="{msg}"' if " " in msg else f"msg={msg}"
    for proc in procs:
        for line in proc.read_lines():
            if needle in line:
                counts[parse_logfmt(line).get("call_id", "")] += 1
    return counts


async def runner_status(addr: str, timeout: float = 2.0) -> object:
    async with grpc.aio.insecure_channel(addr) as ch:
        return await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=timeout)


async def _settle(c: Cluster, within: float = _SETTLE_S) -> bool:
    """Wait until every live runner and the LB report no call in flight; False if they never do."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        busy = 0
        for s in c.stubs:
            if s.popen.poll() is None:
                try:
                    busy += int(getattr(await runner_status(s.addr, 1.0), "active", 0))
                except grpc.aio.AioRpcError:
                    busy += 1
        if c.lb.popen.poll() is None:
            try:
                async with grpc.aio.insecure_channel(c.admin) as ch:
                    resp = await lb_pb2_grpc.AdminStub(ch).ListRunners(
                        lb_pb2.ListRunnersRequest(), timeout=2)
                busy += sum(r.inflight for r in resp.runners)
            except grpc.aio.AioRpcError:
                busy += 1
        if busy == 0:
            return True
        await asyncio.sleep(0.1)
    return False


# -- calls ---------------------------------------------------------------------------


@dataclass
class CallRecord:
    call_id: str
    sent: float  # time.monotonic()
    ended: float = 0.0
    ended_wall: float = 0.0  # time.time() at the end, to compare with runners' log lines
    code: str = ""  # "OK" or the gRPC status code's name
    details: str = ""
    runner: str = ""
    status_code: int = 0

    @property
    def ok(self) -> bool:
        return self.code == "OK"


class Client:
    """Invoke with a unique call id per call; every call's record is kept."""

    def __init__(self, addr: str, prefix: str) -> None:
        self._channel = grpc.aio.insecure_channel(addr)
        self._stub = lb_pb2_grpc.LoadBalancerStub(self._channel)
        self._prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self.records: list[CallRecord] = []

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, *, deadline: float, sleep_ms: int = 0, detached: bool = False,
                   timeout_s: int = 0) -> CallRecord:
        rec = CallRecord(f"{self._prefix}-{next(self._seq)}", time.monotonic())
        self.records.append(rec)
        config = {"sleep_ms": str(sleep_ms)} if sleep_ms else {}
        try:
            resp = await self._stub.Invoke(lb_pb2.InvokeRequest(
                fn_id="chaos", app_id="chaos", call_id=rec.call_id, body=b"x", config=config,
                timeout_s=timeout_s, type=lb_pb2.DETACHED if detached else lb_pb2.SYNC),
                timeout=deadline)
            rec.code, rec.runner, rec.status_code = "OK", resp.runner, resp.status_code
        except grpc.aio.AioRpcError as e:
            rec.code, rec.details = e.code().name, e.details() or ""
        rec.ended, rec.ended_wall = time.monotonic(), time.time()
        return rec

    async def open_loop(self, rate: float, duration: float, *, deadline: float,
                        sleep_ms: int = 0) -> None:
        """``rate`` calls a second for ``duration`` s, whatever the answers; then await them all."""
        t0 = time.monotonic()
        tasks = []
        for i in range(int(rate * duration)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.call(deadline=deadline, sleep_ms=sleep_ms)))
        await asyncio.gather(*tasks)

    async def closed_loop(self, workers: int, stop: asyncio.Event, *, deadline: float,
                          sleep_ms: int = 0, max_calls: int = 20_000) -> None:
        """``workers`` callers back to back until ``stop`` is set or ``max_calls`` in all."""
        budget = itertools.count()

        async def worker() -> None:
            while not stop.is_set() and next(budget) < max_calls:
                await self.call(deadline=deadline, sleep_ms=sleep_ms)

        await asyncio.gather(*(worker() for _ in range(workers)))


# -- the LB's view -------------------------------------------------------------------


class PoolSampler:
    """Admin ListRunners every ``interval`` s: (time, {address: (placed + inflight, inflight)})."""

    def __init__(self, admin_addr: str, interval: float = 0.05) -> None:
        self._addr = admin_addr
        self._interval = interval
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PoolSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self._addr) as ch:
            stub = lb_pb2_grpc.AdminStub(ch)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await stub.ListRunners(lb_pb2.ListRunnersRequest(), timeout=1)
                    self.samples.append((time.monotonic(), {
                        r.address: (r.placed + r.inflight, r.inflight) for r in resp.runners}))
                await asyncio.sleep(self._interval)

    def inflight_before(self, addr: str, t: float) -> int:
        """The runner's in-flight count in the last sample taken before ``t``."""
        last = 0
        for ts, view in self.samples:
            if ts >= t:
                break
            last = view.get(addr, (0, 0))[1]
        return last

    def rises(self, addr: str, start: float, end: float) -> list[float]:
        """Times of the samples in (start, end] where a new attempt on ``addr`` had begun."""
        out: list[float] = []
        prev: int | None = None
        for ts, view in self.samples:
            value = view.get(addr, (0, 0))[0]
            if prev is not None and start < ts <= end and value > prev:
                out.append(ts)
            prev = value
        return out


def _stop_placing_s(sampler: PoolSampler, addr: str, fault: float, end: float) -> float | None:
    """Seconds from the fault to the LB's last placement on ``addr`` before ``end``.

    None when it was still placing there in the last 0.3 s before ``end`` (it never stopped).
    """
    rises = sampler.rises(addr, fault, end)
    if not rises:
        return 0.0
    if rises[-1] > end - 0.3:
        return None
    return rises[-1] - fault


def _first_placement_s(sampler: PoolSampler, addr: str, after: float, end: float) -> float | None:
    rises = sampler.rises(addr, after, end)
    return rises[0] - after if rises else None


def _codes(records: Iterable[CallRecord]) -> dict[str, int]:
    return dict(collections.Counter(r.code for r in records))


# -- scenarios ---------------------------------------------------------------------


@dataclass
class StopResult:
    rate: float
    stopped_s: float
    inflight_at_stop: int
    failed: int
    codes: dict[str, int]
    stop_placing_s: float | None  # None: still placing on it when SIGCONT came
    others_rate: float  # OK calls/s on the other runners from 2 s after the stop to SIGCONT
    run_twice: list[str]
    ok_not_run_once: list[str]  # OK calls not started exactly once on the runner they name
    settled: bool
    records: list[CallRecord]


async def sigstop(c: Cluster, *, rate: float, before: float, stopped: float, after: float,
                  deadline: float, sleep_ms: int) -> StopResult:
    """Open-loop calls; SIGSTOP runner 0 after ``before`` s, SIGCONT ``stopped`` s later."""
    victim, client = c.stubs[0], Client(c.lb.addr, "stop")
    try:
        async with PoolSampler(c.admin) as sampler:
            load = asyncio.ensure_future(client.open_loop(
                rate, before + stopped + after, deadline=deadline, sleep_ms=sleep_ms))
            try:
                await asyncio.sleep(before)
                t_stop = time.monotonic()
                victim.signal(signal.SIGSTOP)
                await asyncio.sleep(stopped)
            finally:
                t_cont = time.monotonic()
                victim.signal(signal.SIGCONT)
            await load
            settled = await _settle(c)
    finally:
        await client.close()
    records = client.records
    window = [r for r in records if r.ok and r.runner != victim.addr
              and t_stop + 2 <= r.ended <= t_cont]
    span = t_cont - t_stop - 2
    return StopResult(
        rate=rate, stopped_s=t_cont - t_stop,
        inflight_at_stop=sampler.inflight_before(victim.addr, t_stop),
        failed=sum(not r.ok for r in records), codes=_codes(records),
        stop_placing_s=_stop_placing_s(sampler, victim.addr, t_stop, t_cont),
        others_rate=len(window) / span if span > 0 else 0.0,
        **_run_checks(c, records), settled=settled, records=records)


def _run_checks(c: Cluster, records: Sequence[CallRecord]) -> dict[str, list[str]]:
    started = runner_calls(c.history, STARTED)
    per_runner = {p.addr: runner_calls([q for q in c.history if q.addr == p.addr], STARTED)
                  for p in c.history}
    nowhere: collections.Counter[str] = collections.Counter()
    return {
        "run_twice": sorted(cid for cid, n in started.items() if n > 1),
        # OK, so it ran: once in all, and on the runner the response names.
        "ok_not_run_once": sorted(
            r.call_id for r in records
            if r.ok and (started[r.call_id] != 1
                         or per_runner.get(r.runner, nowhere)[r.call_id] != 1)),
    }


@dataclass
class PartitionResult:
    mode: str
    cut_s: float
    failed: int
    codes: dict[str, int]
    never_accepted_failed: int  # failed before any runner logged accepting them
    stop_placing_s: float | None
    recovery_s: float | None  # heal -> the LB's first placement on it; None: not within `after`
    run_twice: list[str]
    ok_not_run_once: list[str]
    settled: bool
    records: list[CallRecord]


async def partition(c: Cluster, *, rate: float, before: float, cut: float, after: float,
                    deadline: float, sleep_ms: int, mode: str = "drop") -> PartitionResult:
    """Open-loop calls; cut the namespaced runner off (iptables DROP, or its link down)."""
    assert c.ns is not None
    victim, client = c.stubs[-1], Client(c.lb.addr, "cut")
    try:
        async with PoolSampler(c.admin) as sampler:
            load = asyncio.ensure_future(client.open_loop(
                rate, before + cut + after, deadline=deadline, sleep_ms=sleep_ms))
            try:
                await asyncio.sleep(before)
                t_cut = time.monotonic()
                if mode == "drop":
                    c.ns.partition()
                else:
                    c.ns.link_down()
                await asyncio.sleep(cut)
            finally:
                t_heal = time.monotonic()
                if mode == "drop":
                    c.ns.heal()
                else:
                    c.ns.link_up()
            await asyncio.sleep(after)
            t_end = time.monotonic()
            await load
            settled = await _settle(c)
    finally:
        await client.close()
    records = client.records
    failed = [r for r in records if not r.ok]
    return PartitionResult(
        mode=mode, cut_s=t_heal - t_cut, failed=len(failed), codes=_codes(records),
        never_accepted_failed=len(never_accepted(c.history, failed)),
        stop_placing_s=_stop_placing_s(sampler, victim.addr, t_cut, t_heal),
        recovery_s=_first_placement_s(sampler, victim.addr, t_heal, t_end),
        **_run_checks(c, records), settled=settled, records=records)


@dataclass
class DetachedResult:
    calls: int
    acknowledged: int  # got 202
    accepted_once: int  # ... that exactly one runner logged accepting
    completed: int  # started and never canceled on a runner
    canceled: int
    lb_exit_s: float
    lb_rc: int | None
    run_twice: list[str]
    settled: bool


async def detached_sigterm(c: Cluster, *, calls: int, sleep_ms: int,
                           delay: float) -> DetachedResult:
    """``calls`` detached calls (each ``sleep_ms``), then SIGTERM the LB ``delay`` s later."""
    client = Client(c.lb.addr, "bg")
    try:
        records = await asyncio.gather(*(
            client.call(deadline=20, sleep_ms=sleep_ms, detached=True) for _ in range(calls)))
    finally:
        await client.close()
    await asyncio.sleep(delay)
    t_term = time.monotonic()
    c.lb.signal(signal.SIGTERM)
    rc: int | None = None
    with contextlib.suppress(Exception):
        rc = await asyncio.to_thread(c.lb.popen.wait, 30)
    lb_exit_s = time.monotonic() - t_term
    # The runners own the calls now: wait until they ran (or dropped) them all.
    settled = await _settle(c, sleep_ms / 1000 + _SETTLE_S)
    ids = {r.call_id for r in records}
    accepted = runner_calls(c.history, ACCEPTED)
    started = runner_calls(c.history, STARTED)
    canceled = runner_calls(c.history, CANCELED)
    return DetachedResult(
        calls=calls, acknowledged=sum(r.ok and r.status_code == 202 for r in records),
        accepted_once=sum(accepted[i] == 1 for i in ids),
        completed=sum(started[i] == 1 and canceled[i] == 0 for i in ids),
        canceled=sum(canceled[i] > 0 for i in ids), lb_exit_s=lb_exit_s, lb_rc=rc,
        run_twice=sorted(i for i in ids if started[i] > 1), settled=settled)


@dataclass
class SyncTermResult:
    calls: int
    in_flight_at_term: int
    codes: dict[str, int]
    late_code: str  # a call made during the drain
    late_details: str
    lb_rc: int | None
    run_twice: list[str]
    ok_not_run_once: list[str]


async def sync_sigterm(c: Cluster, *, calls: int, sleep_ms: int) -> SyncTermResult:
    """``calls`` sync calls running, SIGTERM the LB, one more call during its drain."""
    client = Client(c.lb.addr, "term")
    try:
        tasks = [asyncio.ensure_future(client.call(deadline=30, sleep_ms=sleep_ms))
                 for _ in range(calls)]
        active = 0
        for _ in range(200):  # until every call runs on some runner (10 s at most)
            active = 0
            for s in c.stubs:
                active += int(getattr(await runner_status(s.addr), "active", 0))
            if active >= calls:
                break
            await asyncio.sleep(0.05)
        c.lb.signal(signal.SIGTERM)
        await asyncio.to_thread(c.lb.wait_for_line, "msg=draining", 10)
        late = await client.call(deadline=3)
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    rc: int | None = None
    with contextlib.suppress(Exception):
        rc = await asyncio.to_thread(c.lb.popen.wait, 20)
    records = [r for r in client.records if r is not late]
    return SyncTermResult(calls=calls, in_flight_at_term=active, codes=_codes(records),
                          late_code=late.code, late_details=late.details, lb_rc=rc,
                          **_run_checks(c, records))


@dataclass
class KillLoopResult:
    kills: int
    mid_call_kills: int  # kills of an incarnation that had started a function
    calls: int
    codes: dict[str, int]
    run_twice: list[str]
    ok_not_run_once: list[str]
    never_accepted_failed: int


async def sigkill_loop(c: Cluster, *, kills: int, wait: float, workers: int,
                       sleep_ms: int, deadline: float) -> KillLoopResult:
    """Closed-loop calls; runner 0 (on a fixed port) is SIGKILLed and restarted ``kills`` times.

    Each incarnation is killed as soon as it logs starting a function (so a
    call is in flight there), or after ``wait`` s if it gets none.
    """
    client = Client(c.lb.addr, "kill")
    stop = asyncio.Event()
    mid_call = 0
    try:
        load = asyncio.ensure_future(client.closed_loop(
            workers, stop, deadline=deadline, sleep_ms=sleep_ms))
        try:
            for _ in range(kills):
                victim = c.stubs[0]
                try:
                    await asyncio.to_thread(victim.wait_for_line, f'msg="{STARTED}"', wait)
                    mid_call += 1
                except AssertionError:
                    pass  # no call reached it in time: kill it idle
                victim.popen.kill()
                await asyncio.to_thread(victim.popen.wait, 10)
                await asyncio.to_thread(c.restart, 0)
            await asyncio.sleep(1.0)  # calls on the last incarnation
        finally:
            stop.set()
            await load
    finally:
        await client.close()
    records = client.records
    return KillLoopResult(
        kills=kills, mid_call_kills=mid_call, calls=len(records), codes=_codes(records),
        **_run_checks(c, records),
        never_accepted_failed=len(never_accepted(c.history, [r for r in records if not r.ok])))


@dataclass
class DeadRunnersResult:
    dead: int
    live_p50_ms: float
    with_dead_p50_ms: float
    with_dead_codes: dict[str, int]
    states: dict[str, int]  # the dead runners' states in the LB when measured

    @property
    def ratio(self) -> float:
        return self.with_dead_p50_ms / self.live_p50_ms if self.live_p50_ms else float("inf")


async def _p50_ms(lb_addr: str, calls: int) -> tuple[float, dict[str, int]]:
    client = Client(lb_addr, "p50")
    try:
        for _ in range(min(20, calls)):
            await client.call(deadline=10)
        client.records.clear()
        for _ in range(calls):
            await client.call(deadline=10)
    finally:
        await client.close()
    ok = [r.ended - r.sent for r in client.records if r.ok]
    return (statistics.median(ok) * 1000 if ok else float("nan")), _codes(client.records)


async def _states(admin: str, addrs: set[str]) -> dict[str, int]:
    async with grpc.aio.insecure_channel(admin) as ch:
        resp = await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=10)
    return dict(collections.Counter(r.state for r in resp.runners if r.address in addrs))


def dead_runners(*, dead: int, calls: int, settle: float) -> DeadRunnersResult:
    """p50 of sequential calls over 2 live runners, then with ``dead`` refusing addresses added.

    A dead runner is a reserved port (``fnlb.harness.reserved_port``): bound, never
    listening, so every connection to it is refused for the whole run. After
    the LB started, ``settle`` s pass (health polls find the dead) before measuring.
    """
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(reserved_port()) for _ in range(dead)]
        dead_addrs = [f"127.0.0.1:{p}" for p in ports]
        with cluster(2, stub_args=["--log-level", "info"]) as live:
            live_p50, _ = asyncio.run(_p50_ms(live.lb.addr, calls))
            live.group.stop(live.lb)
            lb = live.group.start("fnlb", [
                "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0",
                "--runners", ",".join([*dead_addrs, *(s.addr for s in live.stubs)])],
                name="lb-dead")

            async def measure() -> tuple[float, dict[str, int], dict[str, int]]:
                await asyncio.sleep(settle)
                states = await _states(lb.fields["admin_addr"], set(dead_addrs))
                p50, codes = await _p50_ms(lb.addr, calls)
                return p50, codes, states

            p50, codes, states = asyncio.run(measure())
    return DeadRunnersResult(dead=dead, live_p50_ms=live_p50, with_dead_p50_ms=p50,
                             with_dead_codes=codes, states=states)
