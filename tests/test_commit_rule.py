"""The commit-rule decisions (fnlb.transport.commit), one table per function, every branch."""

from __future__ import annotations

import grpc
import pytest

from fnlb.transport import commit
from fnlb.transport.commit import Verdict

S = grpc.StatusCode
REFUSED = "failed to connect to all addresses; last error: connection refused"


@pytest.mark.parametrize(("code", "details", "busy"), [
    (S.UNAVAILABLE, "Timed out - server too busy", True),
    (S.UNAVAILABLE, "TOO BUSY", True),                   # case does not matter
    (S.UNAVAILABLE, REFUSED, False),
    (S.UNAVAILABLE, None, False),
    (S.UNKNOWN, "server too busy", True),
    (S.UNKNOWN, "boom", False),
    (503, None, True),                                   # fn's raw, non-standard status
    (503, "anything", True),
    (504, "too busy", False),                            # another non-standard code
    (S.INTERNAL, "too busy", False),
    (S.RESOURCE_EXHAUSTED, "too busy", False),
    (S.OK, None, False),
])
def test_is_too_busy(code: commit.Code, details: str | None, busy: bool) -> None:
    assert commit.is_too_busy(code, details) is busy


@pytest.mark.parametrize("text", commit.NOT_CONNECTED)
def test_never_reached_each_connection_failure(text: str) -> None:
    assert commit.never_reached(S.UNAVAILABLE, f"x: {text.upper()} y")
    assert not commit.never_reached(S.UNKNOWN, text)  # only UNAVAILABLE proves it


@pytest.mark.parametrize(("code", "details", "never"), [
    (S.UNAVAILABLE, REFUSED, True),
    (S.UNAVAILABLE, "Socket closed", False),             # may have reached the runner
    (S.UNAVAILABLE, None, False),
    (S.INTERNAL, REFUSED, False),
    (503, REFUSED, False),
])
def test_never_reached(code: commit.Code, details: str | None, never: bool) -> None:
    assert commit.never_reached(code, details) is never


@pytest.mark.parametrize(("success", "error_code", "answered", "nack"), [
    (False, 503, False, True),
    (False, 503, True, False),      # after result_start/http: committed
    (False, 500, False, False),
    (False, 0, False, False),
    (True, 503, False, False),
])
def test_is_nack(success: bool, error_code: int, answered: bool, nack: bool) -> None:
    assert commit.is_nack(success=success, error_code=error_code, answered=answered) is nack


@pytest.mark.parametrize(("code", "details", "committed", "verdict"), [
    (S.UNAVAILABLE, "too busy", False, Verdict.NACK),
    (503, None, False, Verdict.NACK),
    (S.UNKNOWN, "too busy", False, Verdict.NACK),
    (S.UNAVAILABLE, REFUSED, False, Verdict.NEVER_REACHED),
    (S.CANCELLED, None, False, Verdict.CANCELED),
    (S.INTERNAL, "boom", False, Verdict.FAILED),
    (S.UNAVAILABLE, "Socket closed", False, Verdict.FAILED),
    (S.DEADLINE_EXCEEDED, None, False, Verdict.FAILED),
    # Once the runner answered anything, nothing un-commits the call.
    (S.UNAVAILABLE, "too busy", True, Verdict.FAILED),
    (503, None, True, Verdict.FAILED),
    (S.UNAVAILABLE, REFUSED, True, Verdict.FAILED),
    (S.CANCELLED, None, True, Verdict.CANCELED),
    (S.INTERNAL, "boom", True, Verdict.FAILED),
])
def test_rpc_failed(code: commit.Code, details: str | None, committed: bool,
                    verdict: Verdict) -> None:
    assert commit.rpc_failed(code, details, committed=committed) is verdict


@pytest.mark.parametrize(("code", "details", "verdict"), [
    (S.UNIMPLEMENTED, "Method not found!", Verdict.UNSUPPORTED),
    (S.UNAVAILABLE, "too busy", Verdict.NACK),
    (503, None, Verdict.NACK),
    (S.UNAVAILABLE, REFUSED, Verdict.NEVER_REACHED),
    (S.CANCELLED, None, Verdict.CANCELED),
    (S.INTERNAL, "boom", Verdict.FAILED),
])
def test_call_failed(code: commit.Code, details: str | None, verdict: Verdict) -> None:
    assert commit.call_failed(code, details) is verdict


@pytest.mark.parametrize(("code", "details", "not_run", "verdict"), [
    (S.UNIMPLEMENTED, None, True, Verdict.UNSUPPORTED),
    (S.UNIMPLEMENTED, None, False, Verdict.UNSUPPORTED),
    (None, None, True, Verdict.NEVER_REACHED),           # never written, or runner ended OK
    (S.INTERNAL, "boom", True, Verdict.NEVER_REACHED),   # the stream knows it was not run
    (S.UNAVAILABLE, REFUSED, False, Verdict.NEVER_REACHED),
    # Written on a stream the runner serves: committed, even "too busy".
    (S.UNAVAILABLE, "too busy", False, Verdict.FAILED),
    (503, None, False, Verdict.FAILED),
    (S.CANCELLED, None, False, Verdict.CANCELED),
    (S.INTERNAL, "boom", False, Verdict.FAILED),
    (None, None, False, Verdict.LOST),                   # the LB closed the stream
])
def test_stream_failed(code: commit.Code | None, details: str | None, not_run: bool,
                       verdict: Verdict) -> None:
    assert commit.stream_failed(code, details, not_run=not_run) is verdict


@pytest.mark.parametrize(("has_http", "has_finished", "success", "error_code", "verdict"), [
    (False, True, False, 503, Verdict.NACK),
    (True, True, False, 503, Verdict.FINISHED),          # answered first: committed
    (False, True, False, 500, Verdict.FINISHED),
    (True, True, True, 0, Verdict.FINISHED),
    (False, True, True, 0, Verdict.FINISHED),
    (True, False, False, 0, Verdict.INCOMPLETE),
    (False, False, False, 0, Verdict.INCOMPLETE),        # an empty reply
])
def test_replied(has_http: bool, has_finished: bool, success: bool, error_code: int,
                 verdict: Verdict) -> None:
    assert commit.replied(has_http=has_http, has_finished=has_finished, success=success,
                          error_code=error_code) is verdict


PLACED = {
    Verdict.NACK: False,
    Verdict.NEVER_REACHED: False,
    Verdict.UNSUPPORTED: False,
    Verdict.CANCELED: True,
    Verdict.FAILED: True,
    Verdict.LOST: True,
    Verdict.INCOMPLETE: True,
    Verdict.FINISHED: True,
}


def test_only_nack_never_reached_and_unsupported_are_not_placed() -> None:
    # Every Verdict is in the table: a new one must be classified here on purpose.
    assert set(PLACED) == set(Verdict)
    assert {v: v.placed for v in Verdict} == PLACED
