"""DynamicRunnerPool with fake runners: membership, cleanup, health, ejection, panic, slow start.

The fakes stand in for runners only; the pool, its health rules and the
LoadTracker are the real ones. A fake clock drives time; ``poll_once`` runs
one round of probes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from fnlb.calls import LBCall
from fnlb.errors import PoolError, RunnerError, RunnerUnreachable, ServerTooBusy
from fnlb.metrics import Metrics
from fnlb.placers import make_placer
from fnlb.placers.load import LoadTracker
from fnlb.pools import DynamicRunnerPool, MembershipError, StaticSource, UnknownRunner
from fnlb.pools.health import HealthConfig, RunnerHealth, attempt_verdict
from fnlb.runnerpool import DETACHED, Attempt, Runner, RunnerCall, RunnerStatus
from tests.fakes import Clock, make_call


class ProbeRunner:
    """A fake runner whose Status and TryExec answers the test sets."""

    def __init__(self, address: str, registry: FakeFactory) -> None:
        self.address = address
        self.closed = False
        self.up = True
        self.status_value = RunnerStatus(slots_total=4, slots_free=4)
        self.outcome: Attempt = Attempt(True, None)
        self.gate: asyncio.Event | None = None  # try_exec waits on it when set
        self.entered = asyncio.Event()  # set when a try_exec began
        self.tries = 0
        self.drained = False
        self._registry = registry

    async def try_exec(self, call: RunnerCall) -> Attempt:
        self.tries += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.outcome

    async def status(self) -> RunnerStatus:
        if not self.up:
            raise ConnectionError(f"{self.address} down")
        return self.status_value

    async def drain(self, wait: bool = False) -> None:
        self.drained = True

    async def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True
        self._registry.live -= 1


class FakeFactory:
    def __init__(self) -> None:
        self.made: dict[str, list[ProbeRunner]] = {}
        self.live = 0

    def __call__(self, address: str, tls: object | None) -> ProbeRunner:
        r = ProbeRunner(address, self)
        self.made.setdefault(address, []).append(r)
        self.live += 1
        return r

    def last(self, address: str) -> ProbeRunner:
        return self.made[address][-1]


def make_pool(*, health: HealthConfig | None = None, load: LoadTracker | None = None,
              sources: Sequence[StaticSource] = (), seed: int = 1
              ) -> tuple[DynamicRunnerPool, FakeFactory, Clock]:
    factory, clock = FakeFactory(), Clock()
    pool = DynamicRunnerPool(factory, sources=sources, clock=clock, load=load,
                             health=health or HealthConfig(slow_start=0), metrics=Metrics(),
                             rng=random.Random(seed))
    return pool, factory, clock


def value(pool: DynamicRunnerPool, name: str, **labels: str) -> float:
    """A sample of the pool's metrics, read the way Prometheus would."""
    got = pool.metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}"
    return got


def addrs(n: int, base: int = 9000) -> list[str]:
    return [f"127.0.0.1:{base + i}" for i in range(n)]


async def offered(pool: DynamicRunnerPool) -> list[str]:
    return [r.address for r in await pool.runners(make_call())]


class Only:
    """A pool of one runner: lets a real placer place on exactly that handle."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def runners(self, call: RunnerCall) -> Sequence[Runner]:
        return (self.runner,)

    async def shutdown(self) -> None:
        return None


async def held_call(pool: DynamicRunnerPool, factory: FakeFactory, address: str,
                    call: LBCall | None = None) -> asyncio.Future[Runner]:
    """A call a real placer placed on ``address``, held there until the runner's gate opens.

    The placer counts it in the pool's LoadTracker, as in the LB.
    """
    runner = factory.last(address)
    runner.gate, runner.entered = asyncio.Event(), asyncio.Event()
    (handle,) = [r for r in pool.snapshot() if r.address == address]
    placer = make_placer("naive", load=pool.load)
    running = asyncio.ensure_future(placer.place_call(Only(handle), call or make_call()))
    await runner.entered.wait()
    return running


# -- membership and snapshots ---------------------------------------------------

async def test_static_source_sorted_immutable_snapshot() -> None:
    pool, factory, _ = make_pool(sources=[StaticSource(["127.0.0.1:9002", "127.0.0.1:9001"])])
    await pool.start(watch=False)
    snap = await pool.runners(make_call())
    assert isinstance(snap, tuple)
    assert [r.address for r in snap] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert await pool.runners(make_call()) is snap  # not rebuilt without a change
    pool.add("127.0.0.1:9003")
    assert [r.address for r in snap] == ["127.0.0.1:9001", "127.0.0.1:9002"]  # old one intact
    assert await offered(pool) == addrs(3, 9001)
    await pool.shutdown()
    assert factory.live == 0


async def test_state_gauges_follow_the_first_answer() -> None:
    pool, _, _ = make_pool(sources=[StaticSource(addrs(2))])
    await pool.start(watch=False)

    def gauge(state: str) -> float:
        return value(pool, "fnlb_pool_runners", state=state)

    assert (gauge("unknown"), gauge("healthy")) == (2, 0)
    await pool.poll_once()  # both answer their first poll
    assert (gauge("unknown"), gauge("healthy")) == (0, 2)
    await pool.shutdown()


async def test_union_of_sources_and_admin_rules() -> None:
    pool, factory, _ = make_pool(sources=[StaticSource(["127.0.0.1:9001"])])
    await pool.start(watch=False)
    pool.set_source("file", ["127.0.0.1:9001", "127.0.0.1:9002"])
    assert len(factory.made["127.0.0.1:9001"]) == 1  # one runner per address, whatever names it
    pool.add("127.0.0.1:9002")
    with pytest.raises(MembershipError, match="comes from file"):
        pool.remove("127.0.0.1:9002")
    with pytest.raises(UnknownRunner):
        pool.remove("127.0.0.1:9999")
    pool.set_source("file", [])
    assert await offered(pool) == ["127.0.0.1:9001", "127.0.0.1:9002"]  # admin still holds it
    assert pool.remove("127.0.0.1:9002") is True
    await pool.closes_done()
    assert await offered(pool) == ["127.0.0.1:9001"]
    assert factory.last("127.0.0.1:9002").closed
    await pool.shutdown()


async def test_thousands_of_membership_changes_leave_no_state() -> None:
    load = LoadTracker()
    pool, factory, clock = make_pool(load=load)
    await pool.start(watch=False)
    rng = random.Random(7)
    universe = addrs(40)
    for round_ in range(1500):
        members = rng.sample(universe, rng.randint(0, 12))
        pool.set_source("dns", members)
        if round_ % 5 == 0:
            pool.add(rng.choice(universe), ttl=3)
        for r in pool.snapshot()[:3]:
            load.started(r.address)
            await r.try_exec(make_call())
            load.finished(r.address)
        if round_ % 50 == 0:
            await pool.poll_once()  # probes feed the load tracker's report table
        clock.now += 1
        await pool.poll_once() if round_ % 7 == 0 else None
    await pool.closes_done()
    members, retiring = pool.member_count()
    current = {v.address for v in pool.views()}
    assert retiring == 0
    assert factory.live == members == len(current)
    # Every runner ever made is either a current member or closed: no leak.
    for address, made in factory.made.items():
        for r in made[:-1]:
            assert r.closed
        assert made[-1].closed == (address not in current)
    inflight_entries, reports, _warm_keys = load.table_sizes()
    assert inflight_entries == 0 and reports <= members
    assert sum(len(m) for m in factory.made.values()) > 100  # it really churned
    pool.set_source("dns", [])
    clock.now += 10
    await pool.poll_once()
    await pool.closes_done()
    assert pool.member_count() == (0, 0) and factory.live == 0
    assert load.table_sizes() == (0, 0, 0)
    await pool.shutdown()


async def test_removed_runner_closes_only_after_its_calls_finish() -> None:
    pool, factory, _ = make_pool()
    await pool.start(watch=False)
    pool.set_source("file", ["127.0.0.1:9001", "127.0.0.1:9002"])
    r1 = factory.last("127.0.0.1:9001")
    handle = pool.snapshot()[0]
    running = await held_call(pool, factory, "127.0.0.1:9001")
    pool.set_source("file", ["127.0.0.1:9002"])
    await pool.closes_done()
    assert await offered(pool) == ["127.0.0.1:9002"]
    assert not r1.closed and pool.member_count() == (1, 1)
    # A placer still walking the old snapshot does not start new calls there.
    late = await handle.try_exec(make_call())
    assert not late.placed and isinstance(late.error, RunnerUnreachable)
    assert r1.tries == 1
    assert r1.gate is not None
    r1.gate.set()
    assert (await running).address == "127.0.0.1:9001"  # the in-flight call finished normally
    await pool.closes_done()
    assert r1.closed and pool.member_count() == (1, 0)
    await pool.shutdown()


async def test_detached_call_keeps_a_removed_runner_open_until_it_can_finish() -> None:
    pool, factory, clock = make_pool()
    await pool.start(watch=False)
    pool.set_source("file", ["127.0.0.1:9001"])
    call = make_call(call_type=DETACHED)
    assert (await pool.snapshot()[0].try_exec(call)).placed
    pool.set_source("file", [])
    await pool.poll_once()
    await pool.closes_done()
    assert not factory.last("127.0.0.1:9001").closed  # its result stream may still be read
    clock.now += call.model.timeout + 31
    await pool.poll_once()
    await pool.closes_done()
    assert factory.last("127.0.0.1:9001").closed


async def test_address_back_before_close_reuses_the_runner() -> None:
    pool, factory, _ = make_pool()
    await pool.start(watch=False)
    pool.set_source("file", ["127.0.0.1:9001"])
    r = factory.last("127.0.0.1:9001")
    running = await held_call(pool, factory, "127.0.0.1:9001")
    pool.set_source("file", [])
    pool.set_source("file", ["127.0.0.1:9001"])
    assert len(factory.made["127.0.0.1:9001"]) == 1 and factory.live == 1
    assert r.gate is not None
    r.gate.set()
    await running
    await pool.closes_done()
    assert not r.closed
    await pool.shutdown()
    assert r.closed


async def test_ttl_registration_expires() -> None:
    pool, factory, clock = make_pool()
    await pool.start(watch=False)
    assert pool.add("127.0.0.1:9001", ttl=10) is True
    clock.now += 8
    assert pool.add("127.0.0.1:9001", ttl=10) is False  # heartbeat: not new, TTL renewed
    clock.now += 8
    await pool.poll_once()
    assert await offered(pool) == ["127.0.0.1:9001"]
    (view,) = pool.views()
    assert view.sources == ("registered",) and view.ttl_remaining_s == pytest.approx(2)
    clock.now += 3
    await pool.poll_once()
    await pool.closes_done()
    assert await offered(pool) == [] and factory.live == 0


async def test_empty_pool_with_failed_source_is_a_retryable_pool_error() -> None:
    pool, _, _ = make_pool()
    await pool.start(watch=False)
    assert await offered(pool) == []  # empty, no error: placers retry as if busy
    pool.source_error("dns", "dns: runners.x: no such name (NXDOMAIN)")
    with pytest.raises(PoolError, match="NXDOMAIN") as e:
        await pool.runners(make_call())
    assert e.value.retryable
    pool.set_source("dns", ["127.0.0.1:9001"])
    assert await offered(pool) == ["127.0.0.1:9001"]  # last good set kept from here on


# -- health ------------------------------------------------------------------------

async def test_probe_failures_eject_and_recovery_readmits_with_growing_backoff() -> None:
    pool, factory, clock = make_pool()
    await pool.start(watch=False)
    pool.set_source("static", addrs(4))
    victim = factory.last("127.0.0.1:9000")
    victim.up = False
    for _ in range(2):
        await pool.poll_once()
        clock.now += 2
    # 2 failures: not ejected yet, but no new calls until a probe reaches it.
    assert pool.views()[0].state == "suspect"
    assert "127.0.0.1:9000" not in await offered(pool)
    await pool.poll_once()
    assert "127.0.0.1:9000" not in await offered(pool)
    assert pool.views()[0].state == "ejected"
    victim.up = True
    clock.now += 0.5
    await pool.poll_once()
    assert "127.0.0.1:9000" not in await offered(pool)  # backoff (1 s) not over
    clock.now += 0.6
    await pool.poll_once()
    assert "127.0.0.1:9000" in await offered(pool)
    # Second ejection soon after: the backoff doubled.
    victim.up = False
    for _ in range(3):
        clock.now += 2
        await pool.poll_once()
    assert "127.0.0.1:9000" not in await offered(pool)
    victim.up = True
    clock.now += 1.5
    await pool.poll_once()
    assert "127.0.0.1:9000" not in await offered(pool)
    clock.now += 0.6
    await pool.poll_once()
    assert "127.0.0.1:9000" in await offered(pool)
    assert value(pool, "fnlb_pool_readmissions_total") == 2


async def test_placement_failures_count_but_busy_never_does() -> None:
    pool, factory, _ = make_pool()
    await pool.start(watch=False)
    pool.set_source("static", addrs(3))
    handle = pool.snapshot()[0]
    r = factory.last(handle.address)
    r.outcome = Attempt(False, ServerTooBusy())
    for _ in range(50):
        await handle.try_exec(make_call())
    assert handle.address in await offered(pool)  # full is healthy
    r.outcome = Attempt(True, RunnerError("user bug", error_code=500, user_error=True))
    for _ in range(10):
        await handle.try_exec(make_call())
    assert handle.address in await offered(pool)
    r.outcome = Attempt(False, RunnerUnreachable("refused"))
    await handle.try_exec(make_call())
    await handle.try_exec(make_call())
    r.outcome = Attempt(True, None)  # a success in between resets the count
    await handle.try_exec(make_call())
    r.outcome = Attempt(True, RunnerError("crashed", error_code=502))
    await handle.try_exec(make_call())
    await handle.try_exec(make_call())
    assert handle.address in await offered(pool)
    await handle.try_exec(make_call())
    assert handle.address not in await offered(pool)
    assert value(pool, "fnlb_pool_ejections_total", seen_by="placement") == 1


def test_attempt_verdicts() -> None:
    assert attempt_verdict(Attempt(False, ServerTooBusy())) is None
    assert attempt_verdict(Attempt(False, RunnerUnreachable("x"))) is False
    assert attempt_verdict(Attempt(True, None)) is True
    assert attempt_verdict(Attempt(True, RunnerError("x", error_code=502))) is False
    assert attempt_verdict(Attempt(True, RunnerError("x", error_code=504))) is True
    assert attempt_verdict(Attempt(True, RunnerError("x", error_code=413,
                                                     user_error=True))) is True


async def test_max_ejection_percent_caps_ejections() -> None:
    pool, factory, clock = make_pool(health=HealthConfig(slow_start=0,
                                                         max_ejection_percent=50))
    await pool.start(watch=False)
    pool.set_source("static", addrs(5))
    for a in addrs(5)[:4]:
        factory.last(a).up = False
    for _ in range(3):
        await pool.poll_once()
        clock.now += 2
    states = [v.state for v in pool.views()]
    assert states.count("ejected") == 2  # floor(50% of 5)
    # The two that could not be ejected are not offered either while a runner
    # that answers is: dead runners must not tax every call.
    assert states.count("suspect") == 2
    assert await offered(pool) == addrs(5)[4:]
    assert value(pool, "fnlb_pool_ejections_blocked_total") >= 2


async def test_panic_offers_everything_when_all_are_ejected() -> None:
    pool, factory, clock = make_pool(health=HealthConfig(slow_start=0,
                                                         max_ejection_percent=100))
    await pool.start(watch=False)
    pool.set_source("static", addrs(3))
    for a in addrs(3):
        factory.last(a).up = False
    for _ in range(3):
        await pool.poll_once()
        clock.now += 2
    assert all(v.state == "ejected" for v in pool.views())
    assert pool.panic and value(pool, "fnlb_pool_panic") == 1
    assert await offered(pool) == addrs(3)  # try them all rather than fail every call
    factory.last(addrs(3)[1]).up = True
    clock.now += 5
    await pool.poll_once()
    assert not pool.panic and await offered(pool) == [addrs(3)[1]]


async def test_draining_runner_is_not_offered_even_in_panic() -> None:
    pool, factory, clock = make_pool(health=HealthConfig(slow_start=0, max_ejection_percent=100))
    await pool.start(watch=False)
    pool.set_source("static", addrs(2))
    factory.last(addrs(2)[0]).status_value = RunnerStatus(draining=True)
    await pool.poll_once()
    assert await offered(pool) == [addrs(2)[1]]
    assert pool.views()[0].state == "draining"
    assert await pool.drain(addrs(2)[1]) == ""
    assert factory.last(addrs(2)[1]).drained
    assert await offered(pool) == []
    with pytest.raises(UnknownRunner):
        await pool.drain("127.0.0.1:1")
    # The runner reporting it is no longer draining (restarted) comes back; an
    # admin drain sticks while the runner is a member.
    factory.last(addrs(2)[0]).status_value = RunnerStatus()
    factory.last(addrs(2)[1]).status_value = RunnerStatus()
    clock.now += 2
    await pool.poll_once()
    assert await offered(pool) == [addrs(2)[0]]


async def test_network_disabled_ejects_at_once() -> None:
    pool, factory, _ = make_pool()
    await pool.start(watch=False)
    pool.set_source("static", addrs(3))
    factory.last(addrs(3)[2]).status_value = RunnerStatus(is_network_disabled=True)
    await pool.poll_once()
    assert await offered(pool) == addrs(3)[:2]
    assert "network disabled" in pool.views()[2].last_error


async def test_probes_feed_and_membership_cleans_the_load_tracker() -> None:
    load = LoadTracker()
    pool, factory, _ = make_pool(load=load)
    await pool.start(watch=False)
    pool.set_source("static", addrs(2))
    factory.last(addrs(2)[0]).status_value = RunnerStatus(active=3, slots_total=4)
    await pool.poll_once()
    assert load.load(addrs(2)[0]) == 3 and load.table_sizes()[:2] == (0, 2)
    pool.set_source("static", addrs(2)[1:])
    assert load.table_sizes()[:2] == (0, 1) and load.load(addrs(2)[0]) == 0
    assert pool.load is load  # the pool feeds the LB's one tracker, not a copy


async def test_slow_start_ramps_a_joining_runner() -> None:
    pool, factory, clock = make_pool(health=HealthConfig(slow_start=10), seed=3)
    pool.set_source("static", addrs(2))  # the initial set: no ramp
    await pool.start(watch=False)
    pool.add("127.0.0.1:9100")
    new = next(r for r in pool.snapshot() if r.address == "127.0.0.1:9100")
    assert new in pool.snapshot()  # in the list at its place: hash placers keep their map

    async def taken(n: int) -> int:
        before = factory.last("127.0.0.1:9100").tries
        for _ in range(n):
            res = await new.try_exec(make_call())
            assert res.placed or isinstance(res.error, ServerTooBusy)
        return factory.last("127.0.0.1:9100").tries - before

    at_start = await taken(1000)
    clock.now += 5
    halfway = await taken(1000)
    clock.now += 5.1
    after = await taken(1000)
    assert 50 < at_start < 170  # ~10%
    assert 420 < halfway < 580  # ~50%
    assert after == 1000
    assert value(pool, "fnlb_pool_slow_start_skips_total") == 2000 - at_start - halfway


async def test_slow_start_never_skips_when_no_full_share_runner_exists() -> None:
    pool, factory, _ = make_pool(health=HealthConfig(slow_start=10))
    await pool.start(watch=False)
    pool.add("127.0.0.1:9100")  # after start, alone: ramping but nothing to shift load to
    new = pool.snapshot()[0]
    for _ in range(20):
        assert (await new.try_exec(make_call())).placed


def test_health_config_is_validated() -> None:
    from fnlb.errors import ConfigError

    for bad in ({"interval": 0}, {"timeout": -1}, {"eject_after": 0},
                {"max_ejection_percent": 101}, {"slow_start": -1},
                {"backoff_base": 5, "backoff_max": 1}):
        with pytest.raises(ConfigError):
            HealthConfig(**bad)  # type: ignore[arg-type]
    assert HealthConfig().max_ejected(3) == 1 and HealthConfig().max_ejected(1) == 0


def test_backoff_resets_after_a_long_healthy_spell() -> None:
    clock = Clock()
    h = RunnerHealth(HealthConfig(), clock)
    assert [h.eject() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    h.readmit()
    clock.now += 31
    assert h.eject() == 1


# -- one in-flight count ------------------------------------------------------------

async def test_inflight_has_one_count_when_a_runner_leaves_and_comes_back() -> None:
    """A call still running on a runner that left and came back is counted once, by everyone.

    The placer's load tracker is the only count: placers, Admin's view and the
    close-after-retire rule all read it, so they cannot disagree.
    """
    load = LoadTracker()
    pool, factory, _ = make_pool(load=load)
    await pool.start(watch=False)
    a = "127.0.0.1:9001"
    pool.set_source("file", [a])
    running = await held_call(pool, factory, a)
    pool.set_source("file", [])  # leaves while its call runs ...
    pool.set_source("file", [a])  # ... and comes back before the call ends
    (view,) = pool.views()
    assert (load.inflight(a), load.load(a), view.inflight) == (1, 1, 1)
    gate = factory.last(a).gate
    assert gate is not None
    gate.set()
    await running
    (view,) = pool.views()
    assert (load.inflight(a), view.inflight) == (0, 0)
    assert len(factory.made[a]) == 1 and not factory.last(a).closed  # still a member
    await pool.shutdown()


# -- dead runners do not tax calls ------------------------------------------------------

async def test_runners_that_do_not_answer_are_not_offered_while_others_do() -> None:
    pool, factory, clock = make_pool(health=HealthConfig(slow_start=0,
                                                         max_ejection_percent=50))
    await pool.start(watch=False)
    live, dead = addrs(2), addrs(50, 9100)
    pool.set_source("static", live + dead)
    for a in dead:
        factory.last(a).up = False
    await pool.poll_once()
    # One failed probe: not offered (whatever --max-ejection-percent allows).
    assert await offered(pool) == live
    for _ in range(3):
        clock.now += 2
        await pool.poll_once()
    states = [v.state for v in pool.views()]
    assert states.count("ejected") == 26 and states.count("suspect") == 24
    assert await offered(pool) == live
    # One of them comes back: offered again at its next answered probe.
    back = dead[-1]
    factory.last(back).up = True
    for _ in range(20):
        if back in await offered(pool):
            break
        clock.now += 2
        await pool.poll_once()
    assert back in await offered(pool)


async def test_a_runner_a_call_cannot_reach_gets_no_new_calls_until_a_probe_does() -> None:
    pool, factory, clock = make_pool()
    await pool.start(watch=False)
    pool.set_source("static", addrs(3))
    await pool.poll_once()
    assert await offered(pool) == addrs(3)
    first = factory.last(addrs(3)[0])
    first.outcome = Attempt(False, RunnerUnreachable("connection refused"))
    handle = pool.snapshot()[0]
    assert not (await handle.try_exec(make_call())).placed
    assert await offered(pool) == addrs(3)[1:]  # at once, not after eject_after failures
    assert pool.views()[0].state == "suspect"
    clock.now += 2
    await pool.poll_once()  # the probe reaches it: back in placement
    assert await offered(pool) == addrs(3)
