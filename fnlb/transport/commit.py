"""The commit rule as decisions: how the end of one attempt maps onto placed or not.

The rule itself is in protos/fnlb/v1/runner.proto: only a NACK, a "does not
fit", a failure that proves the runner never got the call, or (of a runner that
acknowledges calls, "ack") anything before its acknowledgement, is "not placed"
(the placer may try another runner); everything else is committed and never
re-sent. These are pure
functions of what the LB saw (the status code and details an RPC ended with,
whether the runner had answered anything yet, the fields of its reply).
``GrpcRunner`` turns each ``Verdict`` into an ``Attempt``, writes the response
and logs.

    commit.rpc_failed(grpc.StatusCode.UNAVAILABLE, "too busy", committed=False)
    # Verdict.NACK: not placed, try elsewhere
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import grpc

__all__ = [
    "NOT_CONNECTED",
    "Verdict",
    "call_failed",
    "does_not_fit",
    "finished",
    "is_nack",
    "is_too_busy",
    "never_reached",
    "replied",
    "rpc_failed",
    "stream_failed",
    "unanswered",
]

# Status details that prove an RPC never reached the runner process.
NOT_CONNECTED = ("failed to connect", "connection refused", "connections to all backends failing",
                 "dns resolution failed", "handshake", "ssl", "certificate")

# fn's NACK: finished{success=false, errorCode=503}, and its non-standard status.
_BUSY = 503
# fnlb's "can never run here": finished{success=false, errorCode=507} first.
_DOES_NOT_FIT = 507

# A status code as grpc reports it, or a non-standard one (fn's 503) as its number.
Code: TypeAlias = grpc.StatusCode | int


class Verdict(enum.Enum):
    """How one attempt ended, by the commit rule."""

    NACK = "nack"
    """Not placed: the runner refused the call (too busy); try another."""
    NEVER_REACHED = "never reached"
    """Not placed: the call provably never got to the runner process."""
    DOES_NOT_FIT = "does not fit"
    """Not placed: the runner can never run the call (too big for it); try another."""
    UNACKED = "unacked"
    """Not placed: the runner acknowledges calls ("ack") and had not acknowledged
    this one; it starts nothing without the LB's go, which was never sent."""
    UNSUPPORTED = "unsupported"
    """Not run: the runner does not serve this RPC; send the same attempt another way."""
    CANCELED = "canceled"
    """Committed: the client canceled the call."""
    FAILED = "failed"
    """Committed: the RPC ended with an error; the call may have run."""
    BROKEN = "broken"
    """Committed: the connection broke (UNAVAILABLE) after the commit point; it may have run."""
    LOST = "lost"
    """Committed: the LB closed the call stream after sending the call; it may have run."""
    INCOMPLETE = "incomplete"
    """Committed: the runner answered without a ``finished`` message."""
    FINISHED = "finished"
    """Committed: the runner's ``finished`` message says how the call went."""

    @property
    def placed(self) -> bool:
        """``Attempt.placed``: False only where the placer may try elsewhere."""
        return self not in (Verdict.NACK, Verdict.NEVER_REACHED, Verdict.UNSUPPORTED,
                            Verdict.DOES_NOT_FIT, Verdict.UNACKED)

    @property
    def lost(self) -> bool:
        """``RunnerError.lost``: committed, and the transport (not the runner) ended it."""
        return self in (Verdict.BROKEN, Verdict.LOST)


def _number(code: Code) -> int:
    return code if isinstance(code, int) else code.value[0]


def is_too_busy(code: Code, details: str | None) -> bool:
    """A status that NACKs: UNAVAILABLE or UNKNOWN saying "too busy", or fn's raw 503."""
    text = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and "too busy" in text:
        return True
    # fn's pure runner ends the stream with the non-standard status 503.
    return _number(code) == _BUSY or (code == grpc.StatusCode.UNKNOWN and "too busy" in text)


# What gRPC servers say for a method they do not serve (grpc-python/C core,
# grpc-go, grpc-java): a handler's own UNIMPLEMENTED says nothing of the kind.
METHOD_MISSING = ("method not found", "unknown service", "unknown method")


def method_missing(code: Code, details: str | None) -> bool:
    """UNIMPLEMENTED from gRPC itself: the server has no such RPC (it never ran a call)."""
    if code != grpc.StatusCode.UNIMPLEMENTED:
        return False
    text = (details or "").lower()
    return any(s in text for s in METHOD_MISSING)


def never_reached(code: Code, details: str | None) -> bool:
    """UNAVAILABLE because the LB could not connect (refused, DNS, TLS handshake)."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    text = (details or "").lower()
    return any(s in text for s in NOT_CONNECTED)


def is_nack(*, success: bool, error_code: int, answered: bool) -> bool:
    """A ``finished{success=false, errorCode=503}`` before anything else is a NACK."""
    return not answered and not success and error_code == _BUSY


def does_not_fit(*, success: bool, error_code: int, answered: bool) -> bool:
    """A ``finished{success=false, errorCode=507}`` before anything else: never fits here."""
    return not answered and not success and error_code == _DOES_NOT_FIT


def finished(*, success: bool, error_code: int, answered: bool) -> Verdict:
    """A ``finished`` message; ``answered``: the runner had sent (or acked) something before."""
    if is_nack(success=success, error_code=error_code, answered=answered):
        return Verdict.NACK
    if does_not_fit(success=success, error_code=error_code, answered=answered):
        return Verdict.DOES_NOT_FIT
    return Verdict.FINISHED


def rpc_failed(code: Code, details: str | None, *, committed: bool,
               acks: bool = False, sent: bool = True) -> Verdict:
    """An RPC ended with an error status; ``committed``: the runner had answered something.

    ``acks``: the call asked an "ack" runner for an acknowledgement, so
    ``committed`` means the LB read it; before that, any failure but the
    runner rejecting the call itself (INVALID_ARGUMENT) is not placed.
    ``sent`` False: the stream ended before the LB could write the ``try``
    (e.g. the runner hung up first): without it the runner has no call.
    UNIMPLEMENTED from gRPC itself (``method_missing``) before any answer: the
    runner does not serve the RPC (it speaks the other runner protocol), so it
    never ran the call; a handler's own UNIMPLEMENTED is a failure like others.
    """
    if not committed and is_too_busy(code, details):
        return Verdict.NACK
    if not committed and (not sent or never_reached(code, details)):
        return Verdict.NEVER_REACHED
    if not committed and method_missing(code, details):
        return Verdict.UNSUPPORTED
    if acks and not committed and code != grpc.StatusCode.INVALID_ARGUMENT:
        return Verdict.UNACKED
    if code == grpc.StatusCode.CANCELLED:
        return Verdict.CANCELED
    if code == grpc.StatusCode.UNAVAILABLE:
        return Verdict.BROKEN
    return Verdict.FAILED


def unanswered(*, acks: bool) -> Verdict | None:
    """The accept deadline passed with no answer to the try.

    Of an "ack" runner the call is not placed (cancel it, try elsewhere);
    otherwise None: fn's rule, the call goes on (it may run), and the runner
    is only suspect.
    """
    return Verdict.UNACKED if acks else None


def call_failed(code: Code, details: str | None) -> Verdict:
    """Runner/Call ended with an error status (its reply is the only answer)."""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Verdict.UNSUPPORTED
    return rpc_failed(code, details, committed=False)


def stream_failed(code: Code | None, details: str | None, *, not_run: bool,
                  unacked: bool = False) -> Verdict:
    """The Calls stream ended before this call's reply (``CallStreamFailed``).

    ``code`` None: the stream ended with OK or the LB closed it. ``not_run``:
    the stream knows the runner did not run the call (never written, or the
    runner ended the stream with OK after answering all it had read).
    ``unacked``: the call asked an "ack" runner for an acknowledgement and the
    LB had not read it (so it never sent the go).
    """
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Verdict.UNSUPPORTED
    if not_run or (code is not None and never_reached(code, details)):
        return Verdict.NEVER_REACHED
    if unacked:
        return Verdict.UNACKED
    if code is not None:
        # The call was written on a stream the runner serves: it may have run.
        return rpc_failed(code, details, committed=True)
    return Verdict.LOST


def replied(*, has_http: bool, has_finished: bool, success: bool, error_code: int) -> Verdict:
    """A CallReply (Runner/Call or one call on Runner/Calls).

    ``success`` and ``error_code`` are its ``finished`` fields (their defaults
    when it has none).
    """
    verdict = finished(success=success, error_code=error_code, answered=has_http)
    if verdict is not Verdict.FINISHED:
        return verdict
    if not has_finished:
        return Verdict.INCOMPLETE
    return Verdict.FINISHED
