"""The poll budget (--health-poll-rate), driven by a fake clock.

Fake runners log when their Status was asked (``tests.test_pools_backoff``),
so the tests count real polls, not the prober's bookkeeping.
"""

from __future__ import annotations

import collections

import pytest

from fnlb.errors import ConfigError
from fnlb.pools import DynamicRunnerPool
from fnlb.pools.health import HealthConfig
from fnlb.runnerpool import Attempt
from tests.fakes import Clock, make_call
from tests.test_pools import addrs
from tests.test_pools_backoff import make

BUDGET = HealthConfig(interval=2, timeout=1, slow_start=0, poll_rate=20)


async def drive(pool: DynamicRunnerPool, clock: Clock, until: float) -> None:
    """``_run`` without waiting, to ``until`` seconds after the clock's start (1000).

    A zero delay is allowed only while runners never heard from are still being
    asked (FIRST_PROBES a tick); a busy loop fails the test.
    """
    until += START
    zero = 0
    while clock.now < until:
        delay = await pool.poll_once()
        zero = zero + 1 if delay <= 0 else 0
        assert zero < 50, "busy loop"
        clock.now = min(clock.now + delay, until)
    await pool.poll_once()


START = Clock().now


def polls_between(log: object, start: float, end: float) -> list[float]:
    times = log.polls.values()
    return sorted(t - START for ts in times for t in ts if start <= t - START < end)


def test_poll_period_is_the_interval_until_the_pool_outgrows_the_budget() -> None:
    assert [BUDGET.poll_period(n) for n in (1, 40, 41, 1000)] == [2.0, 2.0, 2.05, 50.0]
    with pytest.raises(ConfigError, match="--health-poll-rate"):
        HealthConfig(poll_rate=0)
    with pytest.raises(ConfigError, match="--runner-idle-close"):
        HealthConfig(idle_close=-1)


async def test_a_small_pool_is_polled_every_interval_as_before() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    pool.set_source("static", addrs(10))
    await drive(pool, clock, 20)
    for a in addrs(10):
        assert log.gaps(a) and all(g == pytest.approx(2.0) for g in log.gaps(a)), log.gaps(a)


async def test_a_large_pool_costs_the_budget_spread_evenly() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    n = 400  # period 400 / 20 = 20 s per runner
    pool.set_source("static", addrs(n))
    await drive(pool, clock, 100)
    # Runners never heard from are asked at once, whatever the budget ...
    assert all(log.polls[a][0] - START < 1 for a in addrs(n))
    assert len(polls_between(log, 0, 1)) <= n + 20
    # ... then the whole pool costs 20 polls/s, not 200 (every 2 s).
    window = polls_between(log, 40, 100)
    assert 0.9 * 20 * 60 <= len(window) <= 1.1 * 20 * 60, len(window)
    # Spread: no second carries more than twice its share.
    per_second = collections.Counter(int(t) for t in window)
    assert max(per_second.values()) <= 40, per_second.most_common(3)
    # Every runner is still polled, about once a period.
    for a in addrs(n)[::37]:
        gaps = [g for g in log.gaps(a) if g < 60]
        assert gaps and all(15 <= g <= 25 for g in gaps[1:]), (a, log.gaps(a))


async def test_runners_whose_calls_ran_lately_are_not_polled() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    pool.set_source("static", addrs(200))  # period 10 s
    await drive(pool, clock, 12)
    busy = addrs(200)[:50]
    handles = {r.address: r for r in await pool.runners(make_call())}
    start = clock.now
    while clock.now < start + 40:
        for a in busy:  # a call ran on each busy runner every 2 s
            pool.attempted(pool._members.get(a), make_call(), Attempt(True, None))
        await drive(pool, clock, clock.now - START + 2)
    assert handles  # all were offered
    for a in busy:
        assert not [t for t in log.polls[a] if t > start + 1], (a, log.polls[a])
    idle = [a for a in addrs(200)[50:] if [t for t in log.polls[a] if t > start]]
    assert len(idle) >= 140  # the idle ones were polled meanwhile (period 10 s, 40 s)
    assert pool._prober.skipped >= 50


async def test_skip_when_passes_runners_over_whatever_the_pool_size() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    watched = set(addrs(10)[:4])
    pool.skip_polls_when(lambda m: m.address in watched)
    pool.set_source("static", addrs(10))
    await drive(pool, clock, 3)  # the first probe asks everyone once
    start = clock.now
    await drive(pool, clock, 30)
    for a in addrs(10):
        later = [t for t in log.polls[a] if t > start]
        assert (not later) if a in watched else len(later) >= 10, (a, later)


async def test_the_budget_holds_while_runners_are_down() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    pool.set_source("static", addrs(400))
    await drive(pool, clock, 30)
    log.down.update(addrs(400)[:200])  # half of them die
    await drive(pool, clock, 90)
    window = polls_between(log, 40, 90)
    assert len(window) <= 1.1 * 20 * 50, len(window)


async def test_per_runner_tables_shrink_back_when_runners_leave() -> None:
    pool, log, clock = make(BUDGET)
    await pool.start(watch=False)
    pool.set_source("static", addrs(300))
    await drive(pool, clock, 5)
    full = pool.table_sizes()
    assert full["members"] == 300 and full["reports"] == 300
    for step in range(10):  # churn: 20 leave, 20 others join, ten times
        keep = addrs(280, base=9000 + 20 * (step + 1))
        pool.set_source("static", keep)
        await drive(pool, clock, clock.now - START + 1)
    pool.set_source("static", addrs(100))
    await drive(pool, clock, clock.now - START + 5)
    await pool.closes_done()
    sizes = pool.table_sizes()
    assert sizes["members"] == 100 and sizes["retiring"] == 0 and sizes["inflight"] == 0
    assert sizes["reports"] <= 100
    # Closed runners: everyone made but the 100 members was closed.
    open_runners = [r for rs in log.made.values() for r in rs if not r.closed]
    assert len(open_runners) == 100


async def test_a_tick_of_first_polls_rebuilds_the_offered_runners_once() -> None:
    # A rebuild walks the whole pool: one per answered poll made starting
    # thousands of runners quadratic. Once per tick, and every answer offered.
    pool, _, _ = make(BUDGET)
    await pool.start(watch=False)
    rebuilds: list[int] = []
    pool.subscribe(lambda: rebuilds.append(len(pool.snapshot())))
    pool.set_source("static", addrs(60))
    rebuilds.clear()
    await pool.poll_once()
    assert rebuilds == [60]
    await pool.shutdown()
