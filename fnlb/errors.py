"""The LB's small exception set.

Every *expected* failure of a call is an ``FnlbError`` that knows the gRPC status
it maps to at the front door (docs/design.md §7). Anything else reaching the front
door is a bug: it is logged with a traceback and reported as INTERNAL.
"""

from __future__ import annotations

import grpc

__all__ = [
    "FnlbError",
    "InvalidRequest",
    "ServerTooBusy",
    "ClientTimeout",
    "ClientCanceled",
    "RunnerError",
    "RunnerUnreachable",
    "PoolError",
    "ConfigError",
]


class FnlbError(Exception):
    """An expected failure, reported to the client with ``code``."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidRequest(FnlbError, ValueError):
    """The client's request is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class ServerTooBusy(FnlbError):
    """No runner accepted the call before the placer gave up (fn: 503)."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503

    def __init__(self, msg: str = "Timed out - server too busy") -> None:
        super().__init__(msg)


class ClientTimeout(FnlbError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504

    def __init__(self, msg: str = "client deadline exceeded") -> None:
        super().__init__(msg)


class ClientCanceled(FnlbError):
    code = grpc.StatusCode.CANCELLED
    http_status = 499

    def __init__(self, msg: str = "client canceled the call") -> None:
        super().__init__(msg)


class RunnerError(FnlbError):
    """The runner committed the call and then failed it (never retried)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, msg: str, *, runner: str = "", error_code: int = 500,
                 user_error: bool = False) -> None:
        super().__init__(msg)
        self.runner = runner
        self.error_code = error_code
        self.user_error = user_error
        self.http_status = error_code
        # A function that failed on its own is the caller's problem, not the
        # platform's availability problem.
        self.code = grpc.StatusCode.UNKNOWN if user_error else grpc.StatusCode.UNAVAILABLE
        if error_code == 504:
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif error_code == 413 or error_code == 400:
            self.code = grpc.StatusCode.INVALID_ARGUMENT


class RunnerUnreachable(FnlbError, ConnectionError):
    """A runner could not be reached before it accepted anything (retryable)."""

    code = grpc.StatusCode.UNAVAILABLE


class PoolError(FnlbError):
    """The pool could not produce runners. ``retryable=False`` makes placers fail fast."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, msg: str, *, retryable: bool = True) -> None:
        super().__init__(msg)
        self.retryable = retryable


class ConfigError(ValueError):
    """Bad configuration: startup fails with this message (names the flag)."""
