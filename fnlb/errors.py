"""The LB's small exception set.

Every *expected* failure of a call is an ``FnlbError``; it carries what happened
(the runner, its error code), and the servicers map it to a gRPC status with
one table, ``fnlb.error_status.grpc_status`` (docs/design.md §7). Anything else
reaching the front door is a bug: it is logged with a traceback and reported as
INTERNAL.

``ConfigError`` is the one root of "bad configuration": flags, environment,
certificate files (``fnlb.tls.TLSConfigError``), the runner stub's settings.
"""

from __future__ import annotations

__all__ = [
    "FnlbError",
    "InvalidRequest",
    "ServerTooBusy",
    "ClientTimeout",
    "ClientCanceled",
    "RunnerError",
    "RunnerUnreachable",
    "DoesNotFit",
    "PoolError",
    "ConfigError",
]


class FnlbError(Exception):
    """An expected failure of a call; ``fnlb.error_status`` says which status clients see."""


class InvalidRequest(FnlbError, ValueError):
    """The client's request is malformed; the message names the field."""


class ServerTooBusy(FnlbError):
    """No runner accepted the call before the placer gave up (fn: 503)."""

    def __init__(self, msg: str = "Timed out - server too busy") -> None:
        super().__init__(msg)


class PassedOn(ServerTooBusy):
    """The pool passed the attempt on without asking the runner (slow start).

    Counted as busy like a NACK, but it says nothing about the runner's slots.
    """


class ShuttingDown(ServerTooBusy):
    """The LB stopped before the call got a runner: it ran nowhere, retry elsewhere."""

    def __init__(self, msg: str = "LB is shutting down: the call was not placed on any "
                                  "runner; retry it on another LB") -> None:
        super().__init__(msg)


class ClientTimeout(FnlbError, TimeoutError):
    # gRPC's own words: a client sees the same text whichever side's timer fired.
    def __init__(self, msg: str = "Deadline Exceeded") -> None:
        super().__init__(msg)


class ClientCanceled(FnlbError):
    def __init__(self, msg: str = "client canceled the call") -> None:
        super().__init__(msg)


class RunnerError(FnlbError):
    """The runner committed the call and then failed it (never retried).

    ``error_code`` is the runner's HTTP-like code (fn's ``errorCode``);
    ``user_error`` says the function failed on its own (fn's ``errorUser``);
    ``lost``: the LB lost the call, not the runner failing it: the connection
    broke or the runner vanished after the commit point (the call may have
    run, may still run, or never ran), as opposed to the runner reporting a
    failure.
    """

    def __init__(self, msg: str, *, runner: str = "", error_code: int = 500,
                 user_error: bool = False, lost: bool = False) -> None:
        super().__init__(msg)
        self.runner = runner
        self.error_code = error_code
        self.user_error = user_error
        self.lost = lost


class RunnerUnreachable(FnlbError, ConnectionError):
    """A runner could not be reached before it accepted anything (retryable)."""


class DoesNotFit(FnlbError):
    """The runner can never run the call (it asks for more memory than the runner has).

    Not placed, like a NACK: another runner may fit it. ``memory_mb_total`` is
    the runner's total memory in MiB when it said so (None otherwise).
    """

    def __init__(self, msg: str, *, runner: str = "", memory_mb_total: int | None = None) -> None:
        super().__init__(msg)
        self.runner = runner
        self.memory_mb_total = memory_mb_total


class PoolError(FnlbError):
    """The pool could not produce runners. ``retryable=False`` makes placers fail fast."""

    def __init__(self, msg: str, *, retryable: bool = True) -> None:
        super().__init__(msg)
        self.retryable = retryable


class ConfigError(ValueError):
    """Bad configuration: startup fails with this message (names the flag).

    Expected, never a bug: ``fnlb`` and ``runner-stub`` print it and exit 2.
    """
