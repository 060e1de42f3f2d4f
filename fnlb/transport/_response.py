"""How big a function's response may be, and the sinks that pass it on as it arrives.

The LB carries a response body of at most ``max_response_bytes``
(``--max-response-bytes``, default ``DEFAULT_MAX_RESPONSE_BYTES``). Every call
tells its runner the limit in ``TryCall.extensions[MAX_RESPONSE_BYTES_KEY]``;
a runner that honours it fails a bigger response before sending any of it,
with ``finished{errorCode: RESPONSE_TOO_LARGE}``, and the LB cuts off a runner
that does not (protos/fnlb/v1/runner.proto, RESPONSE SIZE).
"""

from __future__ import annotations

from typing import Literal, Protocol

from fnlb.errors import RunnerError
from fnlb.runnerpool import ResponseSink

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_RESPONSE_BYTES_KEY",
    "RESPONSE_TOO_LARGE",
    "StreamingSink",
    "is_streaming",
    "too_large",
]

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_RESPONSE_BYTES_KEY = "fnlb.max_response_bytes"
# The runner's errorCode for a response over the limit; the front door maps it
# to RESOURCE_EXHAUSTED (fnlb.error_status). No HTTP status says "response too
# large"; 509 ("bandwidth limit exceeded", non-standard) is used because 507
# before anything else means "can never run here, try another runner" (a NACK
# kind): a response that was too big came from a function that RAN, and must
# never be sent elsewhere.
RESPONSE_TOO_LARGE = 509


class StreamingSink(ResponseSink, Protocol):
    """A sink that passes the response on as it arrives (the front door's InvokeStream).

    ``GrpcRunner`` sends a sync call with such a sink over TryExec, whose
    response body comes in frames of any total size (Call and Calls carry it in
    one message), and sets ``runner`` to the runner's address before ``start``.
    """

    streaming: Literal[True]
    runner: str


def is_streaming(sink: ResponseSink) -> bool:
    """True for a ``StreamingSink`` (a cheap check: once per call)."""
    return getattr(sink, "streaming", False) is True


def too_large(address: str, size: int, limit: int) -> RunnerError:
    """The error for a response the runner sent over the limit (it ignored the extension)."""
    return RunnerError(
        f"runner {address}: response body of at least {size} bytes exceeds the limit of "
        f"{limit} bytes (--max-response-bytes)", runner=address,
        error_code=RESPONSE_TOO_LARGE, user_error=True)
