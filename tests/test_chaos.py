"""Chaos: a real LB and runner stubs under SIGSTOP, SIGKILL loops, partitions and SIGTERM.

Every call has its own call_id and the runners log each call they accept and
each function they start (``bench._chaos``), so "run twice" and "failed but
never accepted" are counted from the runners' own view, not inferred.

What holds today and must keep holding is asserted plainly. What issue 13
wants but is not built yet is ``xfail(strict=True)``: once the fix lands the
test passes, strict turns that pass into a failure, and whoever landed the fix
removes the marker. Each scenario runs once per module (a fixture) and several
tests read its result, so a plain assertion and an xfail one never share a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench import _chaos as chaos
from fnlb import _netns

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Failures a client may see when a runner hangs, dies or is cut off mid-call.
TRANSPORT_FAILURES = {"DEADLINE_EXCEEDED", "UNAVAILABLE"}


def _issue13(what: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"issue 13: {what}")


# -- SIGSTOP of 1 of 3 runners -------------------------------------------------------
# Client deadline 2 s, stopped 4 s: today the LB stops placing on the hung
# runner only while its slots look full, and starts again once the calls stuck
# there reach their deadline.


@pytest.fixture(scope="module")
def stopped() -> chaos.StopResult:
    with chaos.cluster(3) as c:
        return asyncio.run(chaos.sigstop(c, rate=30, before=1.5, stopped=4, after=0.5,
                                         deadline=2, sleep_ms=100))


def test_sigstop_runs_no_call_twice_and_frees_every_slot(stopped: chaos.StopResult) -> None:
    assert len(stopped.records) == 180 and stopped.codes.get("OK", 0) > 0, stopped.codes
    assert stopped.run_twice == []
    assert stopped.ok_not_run_once == []
    assert set(stopped.codes) <= {"OK"} | TRANSPORT_FAILURES, stopped.codes
    # After SIGCONT the runner drops what the LB gave up on: no slot or LB
    # in-flight count stays taken.
    assert stopped.settled


def test_sigstop_placement_stops_within_2s(stopped: chaos.StopResult) -> None:
    assert stopped.stop_placing_s is not None and stopped.stop_placing_s <= 2.0, (
        stopped.stop_placing_s)


# -- partition (iptables DROP) of the runner in a network namespace -------------------


@pytest.fixture(scope="module")
def netns() -> Iterator[_netns.NetNs]:
    reason = _netns.unavailable()
    if reason:
        pytest.skip(reason)
    with _netns.netns() as ns:
        yield ns


@pytest.fixture(scope="module")
def cut(netns: _netns.NetNs) -> chaos.PartitionResult:
    with chaos.cluster(2, in_netns=netns) as c:
        return asyncio.run(chaos.partition(c, rate=30, before=1.5, cut=4, after=6,
                                           deadline=3, sleep_ms=100))


def test_partition_runs_no_call_twice(cut: chaos.PartitionResult) -> None:
    assert len(cut.records) == 345 and cut.codes.get("OK", 0) > 0, cut.codes
    assert cut.run_twice == []
    assert cut.ok_not_run_once == []
    assert set(cut.codes) <= {"OK"} | TRANSPORT_FAILURES, cut.codes
    assert cut.settled


def test_partition_fails_no_never_accepted_call(cut: chaos.PartitionResult) -> None:
    assert cut.never_accepted_failed == 0, cut.codes


def test_partition_placement_stops_within_2s(cut: chaos.PartitionResult) -> None:
    assert cut.stop_placing_s is not None and cut.stop_placing_s <= 2.0, cut.stop_placing_s


def test_partition_heals_back_into_placement(cut: chaos.PartitionResult) -> None:
    # Placed on again within the run's 6 s after healing: a bound that only
    # catches "never"; how soon (target <= 3 s) is measured by make bench-faults.
    assert cut.stop_placing_s is not None, "never taken out of placement"
    assert cut.recovery_s is not None, "not placed on again after healing"


# -- SIGKILL loop of 1 of 3 runners ----------------------------------------------------


def test_sigkill_loop_runs_no_call_twice() -> None:
    # No slow start and frequent polls: each restarted runner gets calls again soon.
    with chaos.cluster(3, fixed_port=True,
                       lb_args=["--slow-start", "0", "--health-interval", "0.5s"]) as c:
        r = asyncio.run(chaos.sigkill_loop(c, kills=5, wait=3, workers=6, sleep_ms=200,
                                           deadline=10))
        assert len(c.history) == 3 + 5  # every restart came up at the same address
    # The kills hit calls in flight, and those failed.
    assert r.mid_call_kills >= 1 and r.codes.get("UNAVAILABLE", 0) >= 1, r
    assert r.codes.get("OK", 0) > 20, r.codes
    assert r.run_twice == []
    assert r.ok_not_run_once == []
    assert set(r.codes) <= {"OK"} | TRANSPORT_FAILURES, r.codes


# -- SIGTERM of the LB ------------------------------------------------------------------


@pytest.fixture(scope="module")
def term_sync() -> chaos.SyncTermResult:
    with chaos.cluster(3) as c:
        return asyncio.run(chaos.sync_sigterm(c, calls=9, sleep_ms=2000))


def test_sigterm_drains_sync_calls_in_flight(term_sync: chaos.SyncTermResult) -> None:
    assert term_sync.in_flight_at_term == 9
    assert term_sync.codes == {"OK": 9}
    assert term_sync.run_twice == [] and term_sync.ok_not_run_once == []
    assert term_sync.lb_rc == 0


def test_sigterm_new_call_during_drain_is_told_draining(term_sync: chaos.SyncTermResult) -> None:
    assert term_sync.late_code == "UNAVAILABLE", term_sync.late_code
    assert "drain" in term_sync.late_details.lower(), term_sync.late_details


@pytest.fixture(scope="module")
def term_detached() -> chaos.DetachedResult:
    with chaos.cluster(3, stub_args=["--slots", "8"]) as c:
        return asyncio.run(chaos.detached_sigterm(c, calls=20, sleep_ms=2000, delay=0.3))


def test_sigterm_with_detached_calls_runs_none_twice(term_detached: chaos.DetachedResult) -> None:
    assert term_detached.acknowledged == 20
    assert term_detached.accepted_once == 20  # each by exactly one runner
    assert term_detached.run_twice == []
    assert term_detached.lb_rc == 0
    assert term_detached.settled


def test_sigterm_detached_calls_all_complete(term_detached: chaos.DetachedResult) -> None:
    assert term_detached.completed == 20, term_detached
