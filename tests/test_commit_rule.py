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


@pytest.mark.parametrize(("success", "error_code", "answered", "fit"), [
    (False, 507, False, False),
    (False, 507, True, True),       # after result_start/http or the ack: a failure
    (False, 503, False, True),
    (True, 507, False, True),
])
def test_does_not_fit(success: bool, error_code: int, answered: bool, fit: bool) -> None:
    assert commit.does_not_fit(success=success, error_code=error_code,
                               answered=answered) is not fit


@pytest.mark.parametrize(("success", "error_code", "answered", "verdict"), [
    (False, 503, False, Verdict.NACK),
    (False, 507, False, Verdict.DOES_NOT_FIT),
    (False, 503, True, Verdict.FINISHED),   # answered (or acked) first: committed
    (False, 507, True, Verdict.FINISHED),
    (False, 500, False, Verdict.FINISHED),
    (False, 400, False, Verdict.FINISHED),  # a refusal: committed, the client sees it
    (True, 0, False, Verdict.FINISHED),
])
def test_finished(success: bool, error_code: int, answered: bool, verdict: Verdict) -> None:
    assert commit.finished(success=success, error_code=error_code, answered=answered) is verdict


@pytest.mark.parametrize(("code", "details", "committed", "verdict"), [
    (S.UNAVAILABLE, "too busy", False, Verdict.NACK),
    (503, None, False, Verdict.NACK),
    (S.UNKNOWN, "too busy", False, Verdict.NACK),
    (S.UNAVAILABLE, REFUSED, False, Verdict.NEVER_REACHED),
    (S.CANCELLED, None, False, Verdict.CANCELED),
    (S.INTERNAL, "boom", False, Verdict.FAILED),
    # fn's rule: the try was sent, the connection broke: committed, and lost.
    (S.UNAVAILABLE, "Socket closed", False, Verdict.BROKEN),
    (S.UNAVAILABLE, "keepalive watchdog timeout", False, Verdict.BROKEN),
    (S.DEADLINE_EXCEEDED, None, False, Verdict.FAILED),
    # Once the runner answered anything, nothing un-commits the call.
    (S.UNAVAILABLE, "too busy", True, Verdict.BROKEN),
    (503, None, True, Verdict.FAILED),
    (S.UNAVAILABLE, REFUSED, True, Verdict.BROKEN),
    (S.CANCELLED, None, True, Verdict.CANCELED),
    (S.INTERNAL, "boom", True, Verdict.FAILED),
])
def test_rpc_failed(code: commit.Code, details: str | None, committed: bool,
                    verdict: Verdict) -> None:
    assert commit.rpc_failed(code, details, committed=committed) is verdict
    assert commit.rpc_failed(code, details, committed=committed, acks=False) is verdict


@pytest.mark.parametrize(("code", "details", "acked", "verdict"), [
    # Before the ack: not placed, whatever broke (the runner starts nothing without the go).
    (S.UNAVAILABLE, "Socket closed", False, Verdict.UNACKED),
    (S.UNAVAILABLE, "keepalive watchdog timeout", False, Verdict.UNACKED),
    (S.INTERNAL, "boom", False, Verdict.UNACKED),
    (S.UNKNOWN, "Stream removed", False, Verdict.UNACKED),
    (S.CANCELLED, None, False, Verdict.UNACKED),          # the runner's server stopping
    (S.DEADLINE_EXCEEDED, None, False, Verdict.UNACKED),
    # ... but a NACK and an unreachable runner stay what they are,
    (S.UNAVAILABLE, "too busy", False, Verdict.NACK),
    (S.UNAVAILABLE, REFUSED, False, Verdict.NEVER_REACHED),
    # and a call the runner rejects as malformed fails: every runner would.
    (S.INVALID_ARGUMENT, "models_call_json: invalid JSON", False, Verdict.FAILED),
    # After the ack: fn's rule, committed.
    (S.UNAVAILABLE, "Socket closed", True, Verdict.BROKEN),
    (S.INTERNAL, "boom", True, Verdict.FAILED),
    (S.CANCELLED, None, True, Verdict.CANCELED),
    (S.UNAVAILABLE, "too busy", True, Verdict.BROKEN),
])
def test_rpc_failed_with_acks(code: commit.Code, details: str | None, acked: bool,
                              verdict: Verdict) -> None:
    assert commit.rpc_failed(code, details, committed=acked, acks=True) is verdict


@pytest.mark.parametrize(("acks", "verdict"), [
    (True, Verdict.UNACKED),   # cancel, try the next runner
    (False, None),             # fn's rule: the call goes on; the runner is only suspect
])
def test_unanswered(acks: bool, verdict: Verdict | None) -> None:
    assert commit.unanswered(acks=acks) is verdict


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
    (S.UNAVAILABLE, "too busy", False, Verdict.BROKEN),
    (503, None, False, Verdict.FAILED),
    (S.CANCELLED, None, False, Verdict.CANCELED),
    (S.INTERNAL, "boom", False, Verdict.FAILED),
    (None, None, False, Verdict.LOST),                   # the LB closed the stream
])
def test_stream_failed(code: commit.Code | None, details: str | None, not_run: bool,
                       verdict: Verdict) -> None:
    assert commit.stream_failed(code, details, not_run=not_run) is verdict
    assert commit.stream_failed(code, details, not_run=not_run, unacked=False) is verdict


@pytest.mark.parametrize(("code", "details", "not_run", "verdict"), [
    # A call asked for an ack and the LB had not read it: no go was sent.
    (S.UNAVAILABLE, "keepalive watchdog timeout", False, Verdict.UNACKED),
    (S.INTERNAL, "boom", False, Verdict.UNACKED),
    (S.CANCELLED, None, False, Verdict.UNACKED),
    (None, None, False, Verdict.UNACKED),                # the LB closed it, or accept timeout
    (S.UNAVAILABLE, REFUSED, False, Verdict.NEVER_REACHED),
    (None, None, True, Verdict.NEVER_REACHED),
    (S.UNIMPLEMENTED, None, False, Verdict.UNSUPPORTED),
])
def test_stream_failed_unacked(code: commit.Code | None, details: str | None, not_run: bool,
                               verdict: Verdict) -> None:
    assert commit.stream_failed(code, details, not_run=not_run, unacked=True) is verdict


@pytest.mark.parametrize(("has_http", "has_finished", "success", "error_code", "verdict"), [
    (False, True, False, 503, Verdict.NACK),
    (True, True, False, 503, Verdict.FINISHED),          # answered first: committed
    (False, True, False, 500, Verdict.FINISHED),
    (True, True, True, 0, Verdict.FINISHED),
    (False, True, True, 0, Verdict.FINISHED),
    (True, False, False, 0, Verdict.INCOMPLETE),
    (False, False, False, 0, Verdict.INCOMPLETE),        # an empty reply
    (False, True, False, 507, Verdict.DOES_NOT_FIT),
    (True, True, False, 507, Verdict.FINISHED),
])
def test_replied(has_http: bool, has_finished: bool, success: bool, error_code: int,
                 verdict: Verdict) -> None:
    assert commit.replied(has_http=has_http, has_finished=has_finished, success=success,
                          error_code=error_code) is verdict


# placed, lost (RunnerError.lost: the transport, not the runner, ended it)
PLACED = {
    Verdict.NACK: (False, False),
    Verdict.NEVER_REACHED: (False, False),
    Verdict.UNSUPPORTED: (False, False),
    Verdict.DOES_NOT_FIT: (False, False),
    Verdict.UNACKED: (False, False),
    Verdict.CANCELED: (True, False),
    Verdict.FAILED: (True, False),
    Verdict.BROKEN: (True, True),
    Verdict.LOST: (True, True),
    Verdict.INCOMPLETE: (True, False),
    Verdict.FINISHED: (True, False),
}


def test_which_verdicts_are_placed_and_lost() -> None:
    # Every Verdict is in the table: a new one must be classified here on purpose.
    assert set(PLACED) == set(Verdict)
    assert {v: (v.placed, v.lost) for v in Verdict} == PLACED


@pytest.mark.parametrize(("code", "details", "committed", "sent", "verdict"), [
    # The LB could not even write the try (the stream had ended): no call reached the runner.
    (S.INTERNAL, "Internal error from Core", False, False, Verdict.NEVER_REACHED),
    (S.UNAVAILABLE, "Socket closed", False, False, Verdict.NEVER_REACHED),
    (S.UNKNOWN, "Stream removed", False, False, Verdict.NEVER_REACHED),
    # The try went out: fn's rule, committed unless NACKed.
    (S.INTERNAL, "Internal error from Core", False, True, Verdict.FAILED),
    (S.UNKNOWN, "Timed out - server too busy", False, True, Verdict.NACK),  # fn's Engage error
    # The runner does not serve the RPC (the other runner protocol): never ran it.
    (S.UNIMPLEMENTED, "Method not found!", False, True, Verdict.UNSUPPORTED),
    (S.UNIMPLEMENTED, "unknown service fnlb.v1.Runner", False, True, Verdict.UNSUPPORTED),
    # A handler's own UNIMPLEMENTED (the function may have started): committed.
    (S.UNIMPLEMENTED, "feature x is not implemented", False, True, Verdict.FAILED),
    # ... but once it answered, nothing un-commits the call.
    (S.UNIMPLEMENTED, "Method not found!", True, True, Verdict.FAILED),
    (S.INTERNAL, "Internal error from Core", True, False, Verdict.FAILED),
])
def test_rpc_failed_fn_runner_refusals(code: commit.Code, details: str | None, committed: bool,
                                       sent: bool, verdict: Verdict) -> None:
    assert commit.rpc_failed(code, details, committed=committed, sent=sent) is verdict
    assert verdict.placed is (verdict not in (Verdict.NEVER_REACHED, Verdict.NACK,
                                              Verdict.UNSUPPORTED))
