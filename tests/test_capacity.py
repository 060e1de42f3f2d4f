"""The capacity-aware wait: placers with a WaitQueue instead of fn's NACK sweep.

Runners here are fakes with real slot accounting (a call beyond the slots gets
a busy NACK, as runner-stub does); the placer, LoadTracker, Capacity and
WaitQueue are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fnlb.calls import CallModel, LBCall
from fnlb.errors import ClientTimeout, InvalidRequest, PassedOn, ServerTooBusy
from fnlb.metrics import Metrics
from fnlb.placers import BasePlacer, make_placer
from fnlb.placers.capacity import Capacity
from fnlb.placers.load import LoadTracker
from fnlb.placers.queue import QueueConfig, QueueFull, WaitQueue
from fnlb.runnerpool import Attempt, PlacerConfig, Runner, RunnerCall, RunnerStatus


class SlotRunner:
    """Holds each call until ``finish_one``; beyond ``slots`` running calls it NACKs."""

    def __init__(self, address: str, slots: int) -> None:
        self.address = address
        self.slots = slots
        self.running: list[asyncio.Future[None]] = []
        self.started: list[str] = []
        self.nacks = 0
        self.changed = asyncio.Event()
        self.hidden = 0  # slots taken by "another LB" we cannot see

    async def try_exec(self, call: RunnerCall) -> Attempt:
        if len(self.running) + self.hidden >= self.slots:
            self.nacks += 1
            self.changed.set()
            return Attempt(False, ServerTooBusy(f"{self.address} busy"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running.append(done)
        self.started.append(call.model.id)
        self.changed.set()
        try:
            await done
        finally:
            if done in self.running:
                self.running.remove(done)
        return Attempt(True, None)

    def finish_one(self) -> None:
        """End the oldest running call; its slot counts as free from now."""
        self.running.pop(0).set_result(None)

    def status(self) -> RunnerStatus:
        busy = len(self.running) + self.hidden
        return RunnerStatus(active=busy, slots_total=self.slots,
                            slots_free=max(0, self.slots - busy))

    async def close(self) -> None:
        return None


class Pool:
    def __init__(self, runners: Sequence[SlotRunner]) -> None:
        self.list: tuple[Runner, ...] = tuple(runners)

    async def runners(self, call: RunnerCall) -> Sequence[Runner]:
        return self.list

    async def shutdown(self) -> None:
        return None


def call(i: int, app: str = "a") -> LBCall:
    return LBCall(CallModel(id=f"{app}{i}", app_id=app, fn_id="f"), b"")


_queue_moved = asyncio.Event()


def setup(runners: Sequence[SlotRunner], *, placer: str = "naive",
          queue: QueueConfig | None = None, timeout: float = 30.0,
          ) -> tuple[Pool, BasePlacer, LoadTracker, Capacity, Metrics]:
    pool = Pool(runners)
    load = LoadTracker(fresh_for=3600)
    wq = WaitQueue(queue or QueueConfig(), on_event=lambda *_: _queue_moved.set())
    cap = Capacity(load, wq, lambda: pool.list)
    metrics = Metrics()
    p = make_placer(placer, PlacerConfig(placer_timeout=timeout), metrics, load=load,
                    capacity=cap)
    for r in runners:
        load.update_reported(r.address, r.status())
    return pool, p, load, cap, metrics


async def depth(cap: Capacity, n: int) -> None:
    """Await queue events until exactly ``n`` calls wait (no sleeps)."""
    while cap.queue.depth() != n:
        _queue_moved.clear()
        await asyncio.wait_for(_queue_moved.wait(), 5)


def busy_retries(m: Metrics) -> float:
    return m.registry.get_sample_value("fnlb_placer_retries_total", {"reason": "busy"}) or 0.0


async def until(cond: object, runners: Sequence[SlotRunner]) -> None:
    """Await runner progress until ``cond()`` holds (no sleeps)."""
    assert callable(cond)
    while not cond():
        waits = [asyncio.ensure_future(r.changed.wait()) for r in runners]
        for r in runners:
            r.changed.clear()
        if cond():
            for w in waits:
                w.cancel()
            return
        done, pending = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        assert done, "no progress within 5 s"


async def test_overload_waits_in_order_without_nacks() -> None:
    runners = [SlotRunner("r1", 2), SlotRunner("r2", 2)]
    pool, placer, load, cap, metrics = setup(runners)
    tasks = []
    for i in range(20):
        tasks.append(asyncio.ensure_future(placer.place_call(pool, call(i))))
        await asyncio.sleep(0)  # arrival order = index order
    await until(lambda: sum(len(r.running) for r in runners) == 4, runners)
    assert cap.queue.depth() == 16
    order: list[str] = []
    for _ in range(20):
        r = next(r for r in runners if r.running)
        r.finish_one()
        await until(lambda: cap.queue.depth() == 0 or sum(len(r.running) for r in runners) == 4,
                    runners)
    await asyncio.gather(*tasks)
    for r in runners:
        order += r.started
    started = sorted(order, key=lambda cid: int(cid[1:]))
    assert started == [f"a{i}" for i in range(20)]
    # The view was exact: not one refusal, and nothing was left behind.
    assert sum(r.nacks for r in runners) == 0 and busy_retries(metrics) == 0
    assert cap.queue.depth() == 0 and load.table_sizes()[0] == 0


async def test_fifo_within_an_app_and_fair_between_apps() -> None:
    runner = SlotRunner("r1", 1)
    pool, placer, _load, cap, _m = setup([runner])
    first = asyncio.ensure_future(placer.place_call(pool, call(0, "a")))
    await until(lambda: len(runner.running) == 1, [runner])
    tasks = [asyncio.ensure_future(placer.place_call(pool, call(i, "a")))
             for i in range(1, 9)]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(placer.place_call(pool, call(i, "b")))
              for i in range(2)]
    await depth(cap, 10)
    for _ in range(10):
        runner.finish_one()
        await until(lambda: len(runner.running) == 1 or cap.queue.depth() == 0, [runner])
    runner.finish_one()
    await asyncio.gather(first, *tasks)
    served = runner.started[1:]
    a_calls = [c for c in served if c.startswith("a")]
    assert a_calls == [f"a{i}" for i in range(1, 9)]  # FIFO within the app
    # App b queued behind 8 calls of app a, yet both its calls were served within
    # the first four turns: fair turns, not arrival order across apps.
    assert max(served.index("b0"), served.index("b1")) <= 3


async def test_a_nack_marks_the_runner_full_until_it_reports_again() -> None:
    runner = SlotRunner("r1", 2)
    pool, placer, load, cap, metrics = setup([runner])
    runner.hidden = 2  # another LB filled it after its last report
    task = asyncio.ensure_future(placer.place_call(pool, call(0)))
    await depth(cap, 1)
    assert runner.nacks == 1 and cap.room("r1") is False  # one refusal, then it waits
    assert load.load("r1") == 2  # the refusal taught the tracker: others hold both slots
    runner.hidden = 0
    load.update_reported("r1", runner.status())  # the next report shows room: a turn
    await until(lambda: len(runner.running) == 1, [runner])
    runner.finish_one()
    assert (await task).address == "r1"
    assert runner.nacks == 1 and busy_retries(metrics) == 1


async def test_a_wait_finds_a_turn_that_is_already_due() -> None:
    # A slot believed free while nobody waited produced no event: the wait
    # itself must hand out the turn, not sleep until the next completion.
    runner = SlotRunner("r1", 2)
    _pool, _placer, _load, cap, _m = setup([runner])
    grant = await cap.wait("a", 1.0, None)
    assert grant.app_id == "a" and cap.queue.depth() == 0


async def test_a_runner_of_unknown_capacity_is_swept_to_until_its_first_nack_teaches_it() -> None:
    # fn's runners report no slot count: the first NACK says how many calls it
    # takes (the load we see there then); later calls wait for ours to end
    # instead of sweeping, and after fresh_for the runner is probed with more.
    runner = SlotRunner("r1", 2)
    pool = Pool([runner])
    now = [0.0]
    load = LoadTracker(fresh_for=2.0, clock=lambda: now[0])
    cap = Capacity(load, WaitQueue(on_event=lambda *_: _queue_moved.set()), lambda: pool.list)
    placer = make_placer("naive", PlacerConfig(retry_all_delay=0.001, placer_timeout=30),
                         load=load, capacity=cap)  # no report: capacity unknown
    held = [asyncio.ensure_future(placer.place_call(pool, call(i))) for i in range(2)]
    await until(lambda: len(runner.running) == 2, [runner])
    assert load.slots("r1") is None and not cap.must_wait(pool.list)  # unknown: sweep
    waiting = [asyncio.ensure_future(placer.place_call(pool, call(i))) for i in (2, 3, 4)]
    await until(lambda: runner.nacks >= 1, [runner])  # the first NACK teaches ...
    await depth(cap, 3)  # ... and every one of them now waits: no more NACKs
    assert load.slots("r1") == 2 and runner.nacks <= 3
    nacks = runner.nacks
    runner.finish_one()  # our call there ends: exactly one turn
    await until(lambda: len(runner.running) == 2, [runner])
    assert cap.queue.depth() == 2 and runner.nacks == nacks
    now[0] += 2.5  # the lesson gets old: probe with 2 * 2 + 1
    assert load.slots("r1") == 5
    cap.kick()
    await until(lambda: runner.nacks > nacks, [runner])  # the probe finds it full again
    assert load.slots("r1") == 2
    for _ in range(4):  # calls 1 to 4 (call 0 ended above)
        await until(lambda: len(runner.running) >= 1, [runner])
        runner.finish_one()
    await asyncio.gather(*held, *waiting)
    load.retain([])
    assert load.slots("r1") is None


async def test_a_queued_call_leaves_at_the_client_deadline_and_at_the_placer_timeout() -> None:
    runner = SlotRunner("r1", 1)
    pool, placer, _load, cap, _m = setup([runner], timeout=0.2)
    held = asyncio.ensure_future(placer.place_call(pool, call(0)))
    await until(lambda: len(runner.running) == 1, [runner])
    loop = asyncio.get_running_loop()
    with pytest.raises(ClientTimeout):
        await placer.place_call(pool, call(1), loop.time() + 0.05)
    with pytest.raises(ServerTooBusy):
        await placer.place_call(pool, call(2))
    assert cap.queue.depth() == 0 and runner.nacks == 0
    runner.finish_one()
    await held


async def test_a_full_queue_sheds_at_once_with_a_pushback() -> None:
    runner = SlotRunner("r1", 1)
    pool, placer, _load, cap, metrics = setup([runner], queue=QueueConfig(max_queue=2))
    tasks = [asyncio.ensure_future(placer.place_call(pool, call(i)))
             for i in range(3)]
    await depth(cap, 2)
    with pytest.raises(QueueFull) as e:
        await placer.place_call(pool, call(9))
    assert e.value.reason == "queue_full" and e.value.limit == 2 and e.value.pushback_ms > 0
    for _ in range(3):
        await until(lambda: len(runner.running) == 1, [runner])
        runner.finish_one()
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    runner = SlotRunner("r1", 1)
    pool, placer, load, cap, _m = setup([runner])
    held = asyncio.ensure_future(placer.place_call(pool, call(0)))
    await until(lambda: len(runner.running) == 1, [runner])
    waiting = asyncio.ensure_future(placer.place_call(pool, call(1)))
    await depth(cap, 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert cap.queue.depth() == 0 and cap.queue.pending_grants() == 0
    # A client that gave up while queued is a client cancel, as one during an attempt is.
    assert _m.placer_client_cancels._value.get() == 1
    runner.finish_one()
    await held
    assert runner.started == ["a0"] and load.table_sizes()[0] == 0


async def test_an_attempt_the_pool_passed_on_says_nothing_about_the_runners_slots() -> None:
    # Slow start passes attempts on without asking the runner: unlike a NACK,
    # that must not make the runner look full (it would starve its ramp).
    class Ramping(SlotRunner):
        async def try_exec(self, call: RunnerCall) -> Attempt:
            self.nacks += 1
            return Attempt(False, PassedOn(f"{self.address} is in slow start"))

    ramping, other = Ramping("r1", 2), SlotRunner("r2", 2)
    pool, placer, load, cap, _m = setup([ramping, other])
    for i in range(2):  # naive's moving start: one of the two tries r1 first
        task = asyncio.ensure_future(placer.place_call(pool, call(i)))
        await until(lambda: len(other.running) == 1, [other])
        other.finish_one()
        assert (await task).address == "r2"
    assert ramping.nacks >= 1
    assert cap.room("r1") is True and load.load("r1") == 0


async def test_a_call_only_some_runners_fit_goes_to_those_and_none_fit_is_invalid() -> None:
    small, big = SlotRunner("small", 2), SlotRunner("big", 2)
    pool, placer, load, _cap, _m = setup([small, big])
    load.update_reported("small", RunnerStatus(slots_total=2, slots_free=2, memory_mb_total=1024))
    load.update_reported("big", RunnerStatus(slots_total=2, slots_free=2, memory_mb_total=4096))
    big_call = LBCall(CallModel(id="m", app_id="a", fn_id="f", memory=2048), b"")
    tasks = [asyncio.ensure_future(placer.place_call(pool, big_call)) for _ in range(3)]
    await until(lambda: len(big.running) == 2, [big, small])
    assert small.started == [] and small.nacks == 0  # never asked the runner that cannot fit
    for _ in range(3):
        await until(lambda: len(big.running) >= 1, [big])
        big.finish_one()
    assert {(await t).address for t in tasks} == {"big"}
    huge = LBCall(CallModel(id="h", app_id="a", fn_id="f", memory=8192), b"")
    with pytest.raises(InvalidRequest, match=r"8192 MiB is more than any runner has"):
        await placer.place_call(pool, huge)


async def test_a_runner_of_unknown_capacity_joining_lets_the_waiters_sweep_to_it() -> None:
    # No event will ever say that a runner without slot reports has room: the
    # calls waiting when it joins go and try it, as fn's sweep would.
    full = SlotRunner("r1", 1)
    pool, placer, _load, cap, _m = setup([full])
    held = asyncio.ensure_future(placer.place_call(pool, call(0)))
    await until(lambda: len(full.running) == 1, [full])
    waiting = asyncio.ensure_future(placer.place_call(pool, call(1)))
    await depth(cap, 1)
    newcomer = SlotRunner("r2", 1)  # reports nothing: its capacity is unknown
    pool.list = (full, newcomer)
    cap.changed()
    await until(lambda: len(newcomer.running) == 1, [newcomer])
    assert cap.queue.depth() == 0 and not cap.must_wait(pool.list)
    newcomer.finish_one()
    full.finish_one()
    assert (await waiting).address == "r2" and (await held).address == "r1"


async def test_a_turn_granted_but_not_yet_used_keeps_newcomers_in_line() -> None:
    runner = SlotRunner("r1", 1)
    pool, _placer, load, cap, _m = setup([runner])
    load.started("r1")  # one of our calls holds the only slot
    waiter = asyncio.ensure_future(cap.wait("a", 5, None))
    await depth(cap, 1)
    load.finished("r1")  # the slot frees: the waiter is granted its turn at once ...
    assert cap.queue.depth() == 0 and cap.queue.pending_grants() == 1
    assert cap.must_wait(pool.list)  # ... and a newcomer queues behind it
    await waiter
    assert cap.queue.pending_grants() == 0 and not cap.must_wait(pool.list)
