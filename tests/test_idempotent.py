"""Opt-in reruns of idempotent calls whose runner was lost, within a retry budget."""

from __future__ import annotations

import pytest

from fnlb.calls import LBCall
from fnlb.errors import RunnerError
from fnlb.metrics import Metrics
from fnlb.placers import BasePlacer, make_placer
from fnlb.placers.retry import RetryBudget
from fnlb.runnerpool import Attempt, CallModel, RunnerCall
from tests.fakes import FakePool, FakeRunner


def lost(call: RunnerCall) -> Attempt:
    return Attempt(True, RunnerError("runner r1 failed the call: UNAVAILABLE: Socket closed",
                                     runner="r1", lost=True))


def reported(call: RunnerCall) -> Attempt:
    return Attempt(True, RunnerError("boom", runner="r1", error_code=500))


def call(idempotent: bool) -> LBCall:
    return LBCall(CallModel(id="c", fn_id="f", idempotent=idempotent), b"hi")


def placer(m: Metrics | None = None) -> BasePlacer:
    """naive, starting at the first runner (r1): the lost run comes first."""
    p = make_placer("naive", metrics=m, idempotent_retries=2)
    p._next = iter(range(100))  # type: ignore[attr-defined]
    return p


def retries(m: Metrics) -> float:
    return m.registry.get_sample_value("fnlb_idempotent_retries_total") or 0.0


async def test_an_idempotent_call_runs_again_elsewhere_when_its_runner_is_lost() -> None:
    first, second = FakeRunner("r1", lost), FakeRunner("r2")
    m = Metrics()
    runner = await placer(m).place_call(FakePool([first, second]), c := call(True))
    assert runner.address == "r2" and c.attempts == 2 and retries(m) == 1
    assert first.tried == ["c"] and second.tried == ["c"]


async def test_at_most_once_unless_the_client_says_idempotent() -> None:
    first, second = FakeRunner("r1", lost), FakeRunner("r2")
    with pytest.raises(RunnerError):
        await placer().place_call(FakePool([first, second]), call(False))
    assert second.tried == []


async def test_a_failure_the_runner_reported_is_never_rerun() -> None:
    first, second = FakeRunner("r1", reported), FakeRunner("r2")
    with pytest.raises(RunnerError):
        await placer().place_call(FakePool([first, second]), call(True))
    assert second.tried == []


async def test_reruns_stop_at_the_limit() -> None:
    runners = [FakeRunner(f"r{i}", lost) for i in range(5)]
    with pytest.raises(RunnerError):
        await placer().place_call(FakePool(runners), call(True))
    assert sum(len(r.tried) for r in runners) == 3  # the first run and 2 reruns


def test_the_budget_stops_retries_in_an_outage_and_refills_on_success() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    allowed = [budget.failed() for _ in range(10)]
    assert allowed == [True] * 4 + [False] * 6  # retries only above half the tokens
    for _ in range(51):  # 0 + 5.1 tokens: still not above half once a loss is taken
        budget.succeeded()
    assert not budget.failed()
    for _ in range(20):  # 4.1 + 2 tokens
        budget.succeeded()
    assert budget.failed()
