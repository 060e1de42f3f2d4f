"""The outcome names spans carry, decided from what the runner answered (by table)."""

from __future__ import annotations

import pytest

from fnlb import tracing
from fnlb.errors import (
    ClientTimeout,
    DoesNotFit,
    PassedOn,
    RunnerError,
    RunnerUnreachable,
    ServerTooBusy,
)
from fnlb.runnerpool import Attempt
from fnlb.v1 import runner_pb2
from runner_stub import tracing as stub_tracing


@pytest.mark.parametrize(("attempt", "outcome"), [
    (Attempt(True), "committed"),
    (Attempt(True, RunnerError("failed after the commit")), "committed"),
    (Attempt(True, ClientTimeout()), "committed"),
    (Attempt(False, ServerTooBusy()), "nack"),
    (Attempt(False, PassedOn("slow start")), "passed_on"),
    (Attempt(False, DoesNotFit("too big", memory_mb_total=256)), "does_not_fit"),
    (Attempt(False, RunnerUnreachable("connection refused")), "unreachable"),
])
def test_attempt_outcome(attempt: Attempt, outcome: str) -> None:
    assert tracing.outcome(attempt) == outcome
    assert outcome in tracing.OUTCOMES


@pytest.mark.parametrize(("finished", "outcome"), [
    (runner_pb2.CallFinished(success=True), "completed"),
    (runner_pb2.CallFinished(success=False, errorCode=503), "nack"),
    (runner_pb2.CallFinished(success=False, errorCode=507), "does_not_fit"),
    (runner_pb2.CallFinished(success=False, errorCode=502), "failed"),
    (runner_pb2.CallFinished(success=False, errorCode=500), "failed"),
])
def test_runner_outcome(finished: runner_pb2.CallFinished, outcome: str) -> None:
    assert stub_tracing.outcome(finished) == outcome


def test_off_by_default() -> None:
    assert not tracing.enabled and tracing.server_interceptors() is None
    assert not stub_tracing.enabled
