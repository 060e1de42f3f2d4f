"""Expected errors -> the gRPC status clients see: one table, used by every servicer.

Errors carry what happened (``fnlb.errors``); which status that is for a client
is decided here alone, so the front door (``fnlb.server``) and Admin
(``fnlb.admin``) cannot drift apart (docs/design.md §7).

    await context.abort(grpc_status(e), str(e))
"""

from __future__ import annotations

import grpc

from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    ConfigError,
    DoesNotFit,
    FnlbError,
    InvalidRequest,
    PoolError,
    RunnerError,
    RunnerUnreachable,
    ServerTooBusy,
)
from fnlb.placers.queue import QueueFull
from fnlb.pools import MembershipError, UnknownRunner

__all__ = ["STATUS_BY_ERROR", "RUNNER_ERROR_STATUS", "grpc_status"]

# The first class the error is an instance of wins.
STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ServerTooBusy, grpc.StatusCode.UNAVAILABLE),
    # A runner that can never run the call; the placer only lets it through
    # when no runner can (placers/_base.py says so with the largest memory).
    (DoesNotFit, grpc.StatusCode.INVALID_ARGUMENT),
    # The wait queue is at --max-queue / --max-queue-per-app: shed at once.
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ClientTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ClientCanceled, grpc.StatusCode.CANCELLED),
    (RunnerUnreachable, grpc.StatusCode.UNAVAILABLE),
    (PoolError, grpc.StatusCode.UNAVAILABLE),
    # Admin: a change that contradicts a source, a runner the pool does not hold,
    # an address that does not parse.
    (MembershipError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownRunner, grpc.StatusCode.NOT_FOUND),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
)

# A committed call the runner failed, by the runner's error code (fn's HTTP-like
# errorCode). Any other code is UNAVAILABLE, or UNKNOWN when the function failed
# on its own (errorUser): the caller's problem, not the platform's availability.
RUNNER_ERROR_STATUS: dict[int, grpc.StatusCode] = {
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    # The response is over --max-response-bytes (fnlb.transport._response).
    509: grpc.StatusCode.RESOURCE_EXHAUSTED,  # response over --max-response-bytes
}


def grpc_status(error: FnlbError | ConfigError) -> grpc.StatusCode:
    """The status a client sees for ``error``; INTERNAL for an FnlbError not in the table."""
    if isinstance(error, RunnerError):
        code = RUNNER_ERROR_STATUS.get(error.error_code)
        if code is not None:
            return code
        return grpc.StatusCode.UNKNOWN if error.user_error else grpc.StatusCode.UNAVAILABLE
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL
