"""The overload wait queue (fnlb.placers.queue): order, fairness, limits, leaving, tables.

Waiters are real tasks on the test's loop; turns are handed out with
``release()`` and observed in the order the waiters resume (the order their
futures were resolved). A fake clock drives waits and the grant rate.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter

import grpc
import pytest

from fnlb.error_status import grpc_status
from fnlb.errors import ConfigError, ServerTooBusy
from fnlb.placers.queue import (
    PUSHBACK_DEFAULT_MS,
    PUSHBACK_MAX_MS,
    PUSHBACK_MIN_MS,
    Grant,
    QueueConfig,
    QueueFull,
    WaitQueue,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Crowd:
    """Waiters on one queue; ``order`` lists their labels in the order they got a turn."""

    def __init__(self, queue: WaitQueue) -> None:
        self.queue = queue
        self.order: list[str] = []
        self.grants: dict[str, Grant] = {}
        self.tasks: dict[str, asyncio.Task[Grant]] = {}
        self._moved = asyncio.Event()

    async def join(self, app: str, *labels: str, timeout: float | None = None,
                   requeue: Grant | None = None) -> list[asyncio.Task[Grant]]:
        """Start one waiter per label (in that order) and let each reach the queue."""
        tasks = []
        for label in labels:
            task = asyncio.create_task(self._wait(app, label, timeout, requeue))
            self.tasks[label] = task
            tasks.append(task)
        # One loop step: each new task runs up to its await on the queue, in order.
        await asyncio.sleep(0)
        return tasks

    async def join_n(self, app: str, n: int,
                     timeout: float | None = None) -> list[asyncio.Task[Grant]]:
        first = sum(label.startswith(app + "-") for label in self.tasks)
        return await self.join(app, *(f"{app}-{i}" for i in range(first, first + n)),
                               timeout=timeout)

    async def requeue(self, label: str, timeout: float | None = None) -> asyncio.Task[Grant]:
        grant = self.grants[label]
        (task,) = await self.join(grant.app_id, label, timeout=timeout, requeue=grant)
        return task

    async def _wait(self, app: str, label: str, timeout: float | None,
                    requeue: Grant | None) -> Grant:
        grant = await self.queue.wait(app, timeout, requeue=requeue)
        self.order.append(label)
        self.grants[label] = grant
        self._moved.set()
        return grant

    async def turns(self, n: int) -> list[str]:
        """``release(n)``; the labels granted, in grant order, once their waiters resumed."""
        start = len(self.order)
        k = self.queue.release(n)
        while len(self.order) < start + k:
            self._moved.clear()
            await self._moved.wait()
        assert len(self.order) == start + k
        return self.order[start:]

    async def one_by_one(self, n: int) -> list[str]:
        out: list[str] = []
        for _ in range(n):
            out += await self.turns(1)
        return out


def empty_tables(q: WaitQueue) -> dict[str, int]:
    return {k: v for k, v in q.tables().items() if v}


# -- order ---------------------------------------------------------------------

async def test_fifo_within_an_app() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join_n("a", 20)
    assert q.depth() == q.depth("a") == 20
    assert await crowd.turns(3) == ["a-0", "a-1", "a-2"]
    assert q.depth() == 17
    assert await crowd.turns(100) == [f"a-{i}" for i in range(3, 20)]
    assert q.depth() == 0 and q.depth("a") == 0
    assert q.counters.granted == 20 and q.counters.queued == 20


async def test_release_grants_at_most_n_and_says_how_many() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    assert q.release(5) == 0  # nobody waits: nothing remembered
    await crowd.join_n("a", 2)
    assert q.release(0) == 0 and q.release(-3) == 0
    assert q.depth() == 2
    assert q.release(5) == 2
    assert q.pending_grants() == 2  # handed out, waiters not resumed yet
    await asyncio.gather(*crowd.tasks.values())
    assert q.pending_grants() == 0
    assert q.release(5) == 0


async def test_flooding_app_does_not_starve_a_light_one() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join_n("A", 56)
    await crowd.join_n("B", 8)
    order = await crowd.one_by_one(64)
    # Turns alternate while both wait; B's k-th call is served at most 2k+1 turns in.
    assert order[:16] == [x for k in range(8) for x in (f"A-{k}", f"B-{k}")]
    b_positions = [i for i, label in enumerate(order) if label.startswith("B")]
    assert all(pos <= 2 * k + 1 for k, pos in enumerate(b_positions))
    # Each app stays FIFO and nobody is lost.
    assert [x for x in order if x.startswith("A")] == [f"A-{i}" for i in range(56)]
    assert [x for x in order if x.startswith("B")] == [f"B-{i}" for i in range(8)]


async def test_a_late_app_does_not_wait_behind_the_backlog() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join_n("A", 56)
    assert await crowd.turns(20) == [f"A-{i}" for i in range(20)]
    await crowd.join_n("B", 8)
    order = await crowd.one_by_one(16)
    # B starts level with A at the current virtual time, not behind A's 36 waiters.
    b_positions = [i for i, label in enumerate(order) if label.startswith("B")]
    assert len(b_positions) == 8
    assert all(pos <= 2 * k + 1 for k, pos in enumerate(b_positions))
    # Over every prefix the two apps are at most one turn apart.
    for i in range(1, 17):
        counts = Counter(label[0] for label in order[:i])
        assert abs(counts["A"] - counts["B"]) <= 1


async def test_weights_share_turns_in_proportion() -> None:
    q = WaitQueue(QueueConfig(weights={"A": 3.0}))
    crowd = Crowd(q)
    await crowd.join_n("A", 40)
    await crowd.join_n("B", 40)
    order = await crowd.turns(40)
    counts = Counter(label[0] for label in order)
    assert abs(counts["A"] - 30) <= 1 and abs(counts["B"] - 10) <= 1
    # ... in every window, not just in total.
    for i in range(4, 41, 4):
        assert abs(Counter(x[0] for x in order[:i])["B"] - i / 4) <= 1


async def test_work_conserving_an_app_alone_gets_every_turn() -> None:
    q = WaitQueue(QueueConfig(weights={"slow": 0.01, "fast": 100.0}))
    crowd = Crowd(q)
    # History of another app does not hold a lone app back.
    await crowd.join_n("fast", 5)
    await crowd.join_n("slow", 3)
    assert len(await crowd.turns(8)) == 8
    await crowd.join_n("slow", 10)
    assert await crowd.turns(10) == [f"slow-{i}" for i in range(3, 13)]


# -- bounds and shedding --------------------------------------------------------

async def test_bounds_shed_at_once_naming_the_limit() -> None:
    events: list[tuple[str, str]] = []
    q = WaitQueue(QueueConfig(max_queue=5, max_queue_per_app=3),
                  on_event=lambda kind, app, waited: events.append((kind, app)))
    crowd = Crowd(q)
    await crowd.join_n("A", 3)
    with pytest.raises(QueueFull) as app_full:
        await q.wait("A")
    e = app_full.value
    assert (e.reason, e.limit, e.app_id) == ("app_queue_full", 3, "A")
    assert grpc_status(e) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-queue-per-app" in str(e) and "3" in str(e)
    assert e.pushback_ms == PUSHBACK_DEFAULT_MS  # no grant seen yet
    await crowd.join_n("B", 2)
    with pytest.raises(QueueFull) as lb_full:
        await q.wait("C")
    assert (lb_full.value.reason, lb_full.value.limit) == ("queue_full", 5)
    assert "--max-queue" in str(lb_full.value)
    assert q.depth() == 5 and q.depth("C") == 0
    assert q.counters.rejected == {"queue_full": 1, "app_queue_full": 1}
    assert ("app_queue_full", "A") in events and ("queue_full", "C") in events
    # Room again after a turn.
    await crowd.turns(1)
    await crowd.join_n("C", 1)
    assert q.depth("C") == 1
    assert q.tables()["lines"] == 3  # a refused app left no line behind


async def test_pushback_is_the_backlog_over_the_recent_grant_rate() -> None:
    clock = Clock()
    q = WaitQueue(QueueConfig(max_queue=20, max_queue_per_app=10), clock=clock)
    crowd = Crowd(q)
    # Ten grants a second for three seconds.
    for _ in range(30):
        await crowd.join_n("warm", 1)
        clock.now += 0.1
        assert len(await crowd.turns(1)) == 1
    rate = q.grant_rate()
    assert rate is not None and 8.5 < rate < 11.5
    waiting = await crowd.join_n("A", 10) + await crowd.join_n("B", 10)
    with pytest.raises(QueueFull) as full:
        await q.wait("C")
    assert full.value.pushback_ms == int(1000 * 20 / rate)  # ~2 s
    # A's own backlog drains at its half of the rate (two apps, equal weight).
    with pytest.raises(QueueFull) as app_full:
        await q.wait("A")
    assert app_full.value.reason == "app_queue_full"
    assert app_full.value.pushback_ms == int(1000 * 10 / (rate / 2))
    # Nothing granted for a long while: the estimate grows, but stays clamped.
    clock.now += 3600
    assert q.pushback_ms() == PUSHBACK_MAX_MS
    q.close(lambda: ServerTooBusy())
    await asyncio.gather(*waiting, return_exceptions=True)
    assert q.pushback_ms() == PUSHBACK_MIN_MS  # nobody ahead


# -- leaving ---------------------------------------------------------------------

async def test_timeout_removes_the_waiter_and_others_keep_order() -> None:
    events: list[tuple[str, str]] = []
    q = WaitQueue(on_event=lambda kind, app, waited: events.append((kind, app)))
    crowd = Crowd(q)
    await crowd.join("a", "a0")
    (late,) = await crowd.join("a", "a1", timeout=0.01)
    await crowd.join("a", "a2")
    with pytest.raises(TimeoutError):
        await late
    assert q.depth() == 2 and q.counters.timeouts == 1
    assert ("timeout", "a") in events
    assert await crowd.turns(5) == ["a0", "a2"]
    assert empty_tables(q) == {}


async def test_zero_timeout_leaves_at_once() -> None:
    q = WaitQueue()
    with pytest.raises(TimeoutError):
        await q.wait("a", timeout=0)
    assert q.depth() == 0 and q.counters.timeouts == 1
    assert empty_tables(q) == {}


async def test_a_head_that_left_was_never_charged() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    (first,) = await crowd.join("A", "A0", timeout=0.01)
    await crowd.join("A", "A1")
    await crowd.join("B", "B0")
    with pytest.raises(TimeoutError):
        await first
    # A1 takes A0's place in virtual time: A1 and B0 tie, A1 arrived first.
    assert await crowd.one_by_one(2) == ["A1", "B0"]


async def test_a_grant_before_the_timeout_wins() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    (task,) = await crowd.join("a", "a0", timeout=0.05)
    assert await crowd.turns(1) == ["a0"]
    assert isinstance(await task, Grant)
    assert q.counters.timeouts == 0


async def test_cancel_removes_the_waiter() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    _, middle, _ = await crowd.join("a", "a0", "a1", "a2")
    middle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await middle
    assert q.depth() == 2 and q.depth("a") == 2 and q.counters.cancelled == 1
    assert await crowd.turns(5) == ["a0", "a2"]
    assert empty_tables(q) == {}


async def test_cancelled_head_is_skipped_before_its_task_cleans_up() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    head, _ = await crowd.join("a", "a0", "a1")
    head.cancel()  # the waiter's future is cancelled; its task has not run yet
    assert await crowd.turns(1) == ["a1"]
    with pytest.raises(asyncio.CancelledError):
        await head
    assert q.counters.cancelled == 1 and q.counters.granted == 1
    assert empty_tables(q) == {}


async def test_a_grant_racing_a_cancel_goes_to_the_next_waiter() -> None:
    events: list[tuple[str, str]] = []
    q = WaitQueue(on_event=lambda kind, app, waited: events.append((kind, app)))
    crowd = Crowd(q)
    first, second = await crowd.join("a", "a0", "a1")
    assert q.release(1) == 1  # a0 is granted ...
    first.cancel()  # ... and cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    grant = await second  # the returned turn went on to a1
    assert crowd.order == ["a1"] and grant.app_id == "a"
    assert q.counters.returned == 1 and q.counters.granted == 2
    assert ("returned", "a") in events
    assert q.pending_grants() == 0 and q.depth() == 0
    # With nobody left to take it, a returned turn is simply dropped.
    (last,) = await crowd.join("a", "a2")
    assert q.release(1) == 1
    last.cancel()
    with pytest.raises(asyncio.CancelledError):
        await last
    assert q.counters.returned == 2 and q.pending_grants() == 0
    assert empty_tables(q) == {}


async def test_a_returned_turn_frees_the_in_flight_slot() -> None:
    q = WaitQueue(QueueConfig(inflight_limit=1))
    crowd = Crowd(q)
    first, _ = await crowd.join("a", "a0", "a1")
    assert q.release(1) == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # a0 never ran: a1 was granted in its place despite the limit of 1.
    await crowd.tasks["a1"]
    assert crowd.order == ["a1"]
    crowd.grants["a1"].done()
    assert empty_tables(q) == {}


# -- requeue ---------------------------------------------------------------------

async def test_requeue_returns_to_the_front_with_the_original_tag() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join("A", "A0", "A1")
    await crowd.join("B", "B0", "B1")
    assert await crowd.turns(1) == ["A0"]
    await crowd.requeue("A0")  # found every runner taken
    assert q.depth() == 4 and q.counters.requeued == 1
    # A0 goes first again (ahead of its own A1 and of B0, which it preceded) and
    # is not charged twice: A1 and B1 then tie again, A1 arrived first.
    assert await crowd.one_by_one(5) == ["A0", "B0", "A1", "B1"]
    grant = crowd.grants["A0"]
    assert grant.queued_s >= grant.waited_s


async def test_requeued_waiters_keep_their_relative_order() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join("A", "A0", "A1", "A2", "A3")
    assert await crowd.turns(2) == ["A0", "A1"]
    await crowd.requeue("A1")
    await crowd.requeue("A0")  # requeued last, but it was ahead
    assert await crowd.turns(2) == ["A0", "A1"]
    await crowd.requeue("A0")
    await crowd.requeue("A1")  # behind A0, ahead of A2
    assert await crowd.turns(4) == ["A0", "A1", "A2", "A3"]


async def test_requeue_is_admitted_even_when_the_queue_is_full() -> None:
    q = WaitQueue(QueueConfig(max_queue=1, max_queue_per_app=1))
    crowd = Crowd(q)
    await crowd.join("A", "A0")
    assert await crowd.turns(1) == ["A0"]
    await crowd.join("A", "A1")
    with pytest.raises(QueueFull):
        await q.wait("A")
    await crowd.requeue("A0")
    assert q.depth() == 2
    assert await crowd.turns(2) == ["A0", "A1"]


async def test_requeue_refuses_a_grant_used_twice_or_of_another_app() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join("A", "A0")
    await crowd.turns(1)
    grant = crowd.grants["A0"]
    with pytest.raises(ValueError, match="app"):
        await q.wait("B", requeue=grant)
    await crowd.requeue("A0")
    with pytest.raises(ValueError, match="already"):
        await q.wait("A", requeue=grant)
    with pytest.raises(ValueError, match="another queue"):
        await WaitQueue().wait("A", requeue=grant)
    assert q.depth() == 1


# -- per-app in-flight limit ------------------------------------------------------

async def test_inflight_limit_skips_an_app_until_its_calls_are_done() -> None:
    q = WaitQueue(QueueConfig(inflight_limit=2, inflight_limits={"B": 1}))
    crowd = Crowd(q)
    await crowd.join_n("A", 5)
    await crowd.join_n("B", 3)
    # A gets 2, B gets 1; the rest of the capacity is not used nor remembered.
    assert sorted(await crowd.turns(10)) == ["A-0", "A-1", "B-0"]
    assert q.release(10) == 0
    assert q.depth("A") == 3 and q.depth("B") == 2
    a0 = crowd.grants["A-0"]
    a0.done()
    a0.done()  # twice is safe: frees one turn, not two
    assert await crowd.turns(10) == ["A-2"]
    with crowd.grants["B-0"]:  # a grant is a context manager for done()
        assert q.release(1) == 0
    assert await crowd.turns(10) == ["B-1"]


async def test_an_app_at_its_limit_earns_no_credit_meanwhile() -> None:
    q = WaitQueue(QueueConfig(inflight_limits={"A": 2}))
    crowd = Crowd(q)
    await crowd.join_n("B", 20)
    await crowd.join_n("A", 10)
    assert await crowd.turns(8) == ["B-0", "A-0", "B-1", "A-1", "B-2", "B-3", "B-4", "B-5"]
    crowd.grants["A-0"].done()
    crowd.grants["A-1"].done()
    # A comes back level with B (B wins the tie, it came first), not owed the
    # four turns B took meanwhile, which would give A two turns in a row.
    assert await crowd.one_by_one(3) == ["A-2", "B-6", "A-3"]


async def test_requeue_under_a_limit_gives_back_the_turn() -> None:
    q = WaitQueue(QueueConfig(inflight_limit=1))
    crowd = Crowd(q)
    await crowd.join("A", "A0", "A1")
    assert await crowd.turns(5) == ["A0"]
    await crowd.requeue("A0")  # done() of the old grant happens inside
    assert await crowd.turns(5) == ["A0"]
    crowd.grants["A0"].done()
    assert await crowd.turns(5) == ["A1"]
    crowd.grants["A1"].done()
    assert empty_tables(q) == {}


# -- shutdown ----------------------------------------------------------------------

async def test_close_wakes_every_waiter_and_refuses_new_ones() -> None:
    events: list[str] = []
    q = WaitQueue(on_event=lambda kind, app, waited: events.append(kind))
    crowd = Crowd(q)
    await crowd.join("A", "A0")
    await crowd.turns(1)  # a grant handed out before close stays valid
    tasks = await crowd.join_n("A", 3) + await crowd.join_n("B", 2)
    assert q.close(lambda: ServerTooBusy("LB shutting down")) == 5
    for task in tasks:
        with pytest.raises(ServerTooBusy, match="shutting down"):
            await task
    with pytest.raises(ServerTooBusy):
        await q.wait("C")
    assert q.closed and q.release(10) == 0 and q.depth() == 0
    assert q.counters.closed == 5 and events.count("closed") == 5
    assert q.close(lambda: ServerTooBusy()) == 0  # twice is safe
    await q.wait_empty()
    crowd.grants["A0"].done()
    assert empty_tables(q) == {}


async def test_wait_empty_returns_once_the_queue_drained() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join_n("A", 2)
    drained = asyncio.create_task(q.wait_empty())
    await crowd.turns(1)
    assert not drained.done()
    await crowd.turns(1)
    await drained
    assert q.depth() == 0


# -- introspection -------------------------------------------------------------------

async def test_depth_oldest_wait_and_event_times() -> None:
    clock = Clock()
    seen: list[tuple[str, str, float, int]] = []
    q = WaitQueue(clock=clock, on_event=lambda kind, app, waited: seen.append(
        (kind, app, waited, q.depth())))
    crowd = Crowd(q)
    assert q.oldest_wait_s() == 0.0
    await crowd.join("A", "A0")
    clock.now += 1.0
    await crowd.join("B", "B0")
    clock.now += 2.0
    assert q.oldest_wait_s() == pytest.approx(3.0)
    assert await crowd.turns(1) == ["A0"]
    assert crowd.grants["A0"].waited_s == pytest.approx(3.0)
    assert q.oldest_wait_s() == pytest.approx(2.0)
    # The observer runs after the change: depth is already current.
    assert seen == [("queued", "A", 0.0, 1), ("queued", "B", 0.0, 2),
                    ("granted", "A", pytest.approx(3.0), 1)]


async def test_a_failing_observer_does_not_break_the_queue(
        caplog: pytest.LogCaptureFixture) -> None:
    def boom(kind: str, app: str, waited: float) -> None:
        raise RuntimeError("observer bug")

    q = WaitQueue(on_event=boom)
    crowd = Crowd(q)
    await crowd.join_n("A", 2)
    assert await crowd.turns(2) == ["A-0", "A-1"]
    assert "observer bug" in caplog.text


# -- bounded tables --------------------------------------------------------------------

async def test_tables_are_empty_again_after_churn_of_many_apps() -> None:
    rng = random.Random(12)
    q = WaitQueue(QueueConfig(inflight_limit=2, weights={"app-7": 0.5, "app-9": 4.0}))
    crowd = Crowd(q)
    apps = [f"app-{i}" for i in range(300)]
    for _ in range(40):
        for app in rng.sample(apps, 25):
            await crowd.join_n(app, rng.randint(1, 3),
                               timeout=0.0 if rng.random() < 0.1 else None)
        waiting = [t for t in crowd.tasks.values() if not t.done()]
        for task in rng.sample(waiting, len(waiting) // 10):
            task.cancel()
        for label in await crowd.turns(rng.randint(10, 40)):
            if rng.random() < 0.2:
                await crowd.requeue(label)
            else:
                crowd.grants[label].done()
        assert q.tables()["idle_finish"] <= len(apps)
    # Let everyone finish: give turns and end them until nobody waits.
    while q.depth():
        turns = await crowd.turns(50)
        assert turns
        for label in turns:
            crowd.grants[label].done()
    await asyncio.gather(*crowd.tasks.values(), return_exceptions=True)
    assert q.counters.granted > 500 and q.counters.cancelled > 50
    assert q.counters.timeouts > 50 and q.counters.requeued > 50
    assert empty_tables(q) == {}
    assert q.pending_grants() == 0


async def test_idle_history_stays_small_while_the_queue_stays_busy() -> None:
    q = WaitQueue()
    crowd = Crowd(q)
    await crowd.join_n("bg", 600)
    for i in range(300):
        await crowd.join(f"visitor-{i}", f"v{i}")
        await crowd.turns(2)
        t = q.tables()
        assert t["idle_finish"] <= 2 and t["idle_heap"] <= 2 * t["idle_finish"] + 64
        assert t["heap"] <= 2 * t["lines"] + 65
    assert q.depth("bg") == 300


async def test_removed_entries_behind_a_blocked_head_are_compacted() -> None:
    q = WaitQueue(QueueConfig(inflight_limit=1))
    crowd = Crowd(q)
    await crowd.join("A", "A0", "A1")
    await crowd.turns(1)  # A is at its limit; A1 stays the head
    for round_ in range(20):
        tasks = await crowd.join_n("A", 50)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        t = q.tables()
        assert t["waiting"] == 1 and t["line_entries"] <= 1 + 33, round_
    crowd.grants["A0"].done()
    assert await crowd.turns(1) == ["A1"]


# -- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, flag", [
    ({"max_queue": 0}, "--max-queue"),
    ({"max_queue_per_app": 0}, "--max-queue-per-app"),
    ({"weights": {"a": 0.0}}, "weight of app 'a'"),
    ({"weights": {"a": -1.0}}, "weight of app 'a'"),
    ({"weights": {"a": math.nan}}, "weight of app 'a'"),
    ({"inflight_limit": 0}, "per app"),
    ({"inflight_limits": {"b": 0}}, "of app 'b'"),
])
def test_config_rejects_bad_values_naming_them(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        QueueConfig(**kwargs)  # type: ignore[arg-type]


def test_config_keeps_its_own_copy_of_the_mappings() -> None:
    weights = {"a": 2.0}
    cfg = QueueConfig(weights=weights)
    weights["a"] = 9.0
    assert cfg.weight_of("a") == 2.0 and cfg.weight_of("other") == 1.0
    assert cfg.limit_of("a") is None
