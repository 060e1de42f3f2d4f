"""Status-poll back-off of runners that do not answer, driven by a fake clock.

``drive`` plays the pool's own loop (``_run``): poll, then jump the clock by the
delay ``poll_once`` returned. Fake runners log when their Status was asked, so
the tests read the real poll schedule, not the pool's bookkeeping.
"""

from __future__ import annotations

import random

import pytest

from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.pools import DynamicRunnerPool
from fnlb.pools.health import HealthConfig
from fnlb.runnerpool import Attempt, RunnerStatus
from tests.fakes import Clock, make_call
from tests.test_pools import FakeFactory, ProbeRunner, addrs, offered

CFG = HealthConfig(interval=2, timeout=1, eject_after=3, poll_backoff_max=30, slow_start=0)


class PollLog(FakeFactory):
    """Runners whose Status calls are logged with the clock's time, per address."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.polls: dict[str, list[float]] = {}
        self.down: set[str] = set()

    def __call__(self, address: str, tls: object | None) -> ProbeRunner:
        r = LoggedRunner(address, self)
        self.made.setdefault(address, []).append(r)
        self.live += 1
        return r

    def gaps(self, address: str) -> list[float]:
        t = self.polls.get(address, [])
        return [b - a for a, b in zip(t, t[1:], strict=False)]


class LoggedRunner(ProbeRunner):
    def __init__(self, address: str, log: PollLog) -> None:
        super().__init__(address, log)
        self._log = log

    async def status(self) -> RunnerStatus:
        self._log.polls.setdefault(self.address, []).append(self._log.clock.now)
        if self.address in self._log.down:
            raise ConnectionError(f"{self.address} refused")
        return self.status_value


def make(cfg: HealthConfig = CFG, seed: int = 1) -> tuple[DynamicRunnerPool, PollLog, Clock]:
    clock = Clock()
    log = PollLog(clock)
    pool = DynamicRunnerPool(log, clock=clock, health=cfg, metrics=Metrics(),
                             rng=random.Random(seed))
    return pool, log, clock


async def drive(pool: DynamicRunnerPool, clock: Clock, until: float) -> None:
    """What ``_run`` does, without waiting: poll, sleep the returned delay, repeat."""
    while clock.now < until:
        delay = await pool.poll_once()
        assert delay > 0 or clock.now == until  # never a busy loop
        clock.now = min(clock.now + delay, until)
    await pool.poll_once()


# -- the schedule -------------------------------------------------------------------


def test_poll_delay_doubles_after_eject_after_misses_up_to_the_cap() -> None:
    assert [CFG.poll_delay(n) for n in range(9)] == [2, 2, 2, 4, 8, 16, 30, 30, 30]
    # Jitter only ever shortens, by up to half, and never below the interval.
    for n in range(3, 40):
        for j in (0.0, 0.3, 0.999):
            d = CFG.poll_delay(n, j)
            assert max(2.0, CFG.poll_delay(n) / 2) <= d <= CFG.poll_delay(n) <= 30
    assert CFG.poll_delay(4, 0.5) == 6.0
    assert CFG.poll_delay(10**9) == 30  # a runner dead for years: no overflow
    # A cap at or below the interval turns the back-off off.
    flat = HealthConfig(interval=5, poll_backoff_max=5)
    assert {flat.poll_delay(n, 0.7) for n in range(50)} == {5}


def test_poll_backoff_max_is_validated() -> None:
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="health-backoff-max"):
            HealthConfig(poll_backoff_max=bad)
    assert HealthConfig().poll_backoff_max == 30


# -- the pool's poll loop -------------------------------------------------------------


async def test_dead_runner_polls_spread_out_exponentially_healthy_ones_stay_on_interval() -> None:
    pool, log, clock = make()
    await pool.start(watch=False)
    pool.set_source("static", addrs(4))
    dead, healthy = addrs(4)[0], addrs(4)[1:]
    log.down.add(dead)
    start = clock.now
    await drive(pool, clock, start + 600)

    polls = log.polls[dead]
    assert polls[:3] == [start, start + 2, start + 4]  # noticed as fast as before: 3 polls
    assert pool.views()[0].state == "ejected"
    assert polls[3] == start + 5  # one look when its 1 s readmission backoff ends
    gaps = log.gaps(dead)[3:]
    for missed, gap in enumerate(gaps, start=4):
        full = CFG.poll_delay(missed)
        # Jittered down by up to half, batched onto the interval grid: never later.
        assert max(2.0, full / 2 - 2) <= gap <= full, (missed, gap, gaps)
    assert gaps[0] <= 8 and gaps[1] <= 16  # it grows ...
    assert all(gap >= 13 for gap in gaps[2:]) and max(gaps) <= 30  # ... up to the cap
    assert len(polls) <= 4 + 600 / 13  # vs 300 at the interval
    for a in healthy:
        assert set(log.gaps(a)) == {2.0}, a  # untouched: every interval, on the dot
        assert len(log.polls[a]) == 301


async def test_jitter_spreads_runners_that_died_together() -> None:
    pool, log, clock = make()
    await pool.start(watch=False)
    pool.set_source("static", addrs(40))
    log.down.update(addrs(40)[:20])
    start = clock.now
    await drive(pool, clock, start + 300)
    # They all failed in the same ticks; at the cap their polls are spread out.
    last = {log.polls[a][-1] for a in addrs(40)[:20]}
    assert len(last) >= 5
    assert all(log.polls[a][-1] >= start + 300 - 30 for a in addrs(40)[:20])


async def test_answered_poll_resets_to_the_interval_and_readmits_within_the_cap() -> None:
    pool, log, clock = make()
    await pool.start(watch=False)
    pool.set_source("static", addrs(2))
    dead = addrs(2)[0]
    log.down.add(dead)
    worst = 0.0
    # Down for 10 minutes, then back at many moments between two polls.
    for k in range(40):
        await drive(pool, clock, clock.now + 600)
        assert dead not in await offered(pool)
        assert max(log.gaps(dead)[-3:]) >= 13  # really backed off
        back = clock.now + k * 0.77
        await drive(pool, clock, back)
        log.down.discard(dead)
        while dead not in await offered(pool):
            assert clock.now - back <= CFG.poll_backoff_max
            await drive(pool, clock, clock.now + min(await pool.poll_once(), 0.25))
        worst = max(worst, clock.now - back)
        assert pool.views()[0].state == "healthy"
        # Answered: from now on, every interval again.
        n = len(log.polls[dead])
        await drive(pool, clock, clock.now + 20)
        assert set(log.gaps(dead)[n - 1:]) == {2.0}
        log.down.add(dead)
    assert 2 < worst <= CFG.poll_backoff_max  # the documented bound, and it was approached


async def test_a_call_that_runs_resets_the_poll_interval() -> None:
    pool, log, clock = make()
    await pool.start(watch=False)
    pool.set_source("static", addrs(3))
    log.down.update(addrs(3))
    await drive(pool, clock, clock.now + 300)
    # 50% of 3: two of the dead runners cannot be ejected; with none up,
    # placers still offer those two.
    flaky, _spare = [v.address for v in pool.views() if v.state == "suspect"]
    (other,) = [v.address for v in pool.views() if v.state == "ejected"]
    assert max(log.gaps(flaky)[-3:]) >= 13
    handle = next(r for r in pool.snapshot() if r.address == flaky)
    log.last(flaky).outcome = Attempt(True, None)
    assert (await handle.try_exec(make_call())).placed
    ran_at = clock.now
    before = len(log.polls[flaky])
    await drive(pool, clock, clock.now + 2)
    # Polled within the interval of the call, not up to 30 s later.
    assert len(log.polls[flaky]) == before + 1 and log.polls[flaky][-1] - ran_at <= 2
    # Still not answering: the back-off starts over, from the interval.
    await drive(pool, clock, clock.now + 4)
    assert log.gaps(flaky)[-2:] == [2.0, 2.0]
    assert log.gaps(other)[-1] >= 13  # the runner nobody called stays backed off


async def test_a_runner_that_answered_is_polled_on_interval_after_it_went_silent() -> None:
    # A restart or a short partition: found again within an interval of coming
    # back; only a runner silent for longer than poll_backoff_after backs off.
    cfg = HealthConfig(interval=2, timeout=1, eject_after=3, poll_backoff_max=30,
                       poll_backoff_after=20, slow_start=0)
    pool, log, clock = make(cfg)
    await pool.start(watch=False)
    pool.set_source("static", addrs(2))
    flaky = addrs(2)[0]
    await drive(pool, clock, clock.now + 10)  # it answers for a while
    log.down.add(flaky)
    went = clock.now
    n = len(log.polls[flaky])
    await drive(pool, clock, went + 19)
    # Still at least every interval (sooner when an ejection's back-off ends).
    assert max(log.gaps(flaky)[n - 1:]) == 2.0
    await drive(pool, clock, went + 120)
    assert max(log.gaps(flaky)[-3:]) >= 13  # silent for long: backed off
    log.down.discard(flaky)
    while flaky not in await offered(pool):
        await drive(pool, clock, clock.now + min(await pool.poll_once(), 0.25))
    log.down.add(flaky)  # silent again soon after: back on the interval at once
    n = len(log.polls[flaky])
    await drive(pool, clock, clock.now + 12)
    assert max(log.gaps(flaky)[n - 1:]) == 2.0
