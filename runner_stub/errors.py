"""The runner stub's small exception set.

Each one is *expected* (bad input or a decision, mapped to a gRPC status or a
``finished`` message); anything else escaping a handler is a bug.
"""

from __future__ import annotations

# One "bad configuration" error for the LB and the stub (and the TLS files both
# load): a setting is invalid; the message names the command-line flag.
from fnlb.errors import ConfigError

__all__ = [
    "ConfigError", "ProtocolError", "BadCall", "CallRejected", "FunctionFailed", "NoGo",
    "StartupError",
]


class ProtocolError(ValueError):
    """The TryExec stream broke the protocol (wrong message order, missing eof).

    Answered with gRPC status INVALID_ARGUMENT: only a buggy LB does this.
    """


class BadCall(ValueError):
    """``models_call_json`` is not a usable call. Answered with INVALID_ARGUMENT."""


class CallRejected(Exception):
    """The call is well formed but this runner refuses it for good (not "busy").

    Answered with ``finished{success=false, errorCode=code}``; code is never 503,
    so the LB reports it to the client instead of trying another runner (which
    would refuse it the same way).
    """

    def __init__(self, code: int, message: str, *, user_error: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.user_error = user_error


class NoGo(Exception):
    """An acknowledged call's go (runner.proto, THE ACKNOWLEDGEMENT) did not come in time.

    The call is dropped, never started, and answered ``finished{errorCode=500}``.
    """


class FunctionFailed(Exception):
    """The (fake) function itself failed; the message is its error string."""


class StartupError(RuntimeError):
    """The server could not start (address in use, bad credentials)."""
