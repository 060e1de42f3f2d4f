"""The LB's side of the runner protocol: one runner over gRPC, and how a call reaches it.

``GrpcRunner`` is the ``fnlb.runnerpool.Runner`` backed by a ``fnlb.v1.Runner``
channel; it implements the commit rule (protos/fnlb/v1/runner.proto) over
Runner/Calls (``CallStream``), Runner/Call and TryExec (``_tryexec``); the
decisions are the pure functions of ``commit``, acted on by ``_answers``.

    factory = make_runner_factory(metrics)      # an MTLSRunnerFactory
    runner = factory("10.0.0.5:9190", None)     # plaintext; ClientTLS for mTLS
    attempt = await runner.try_exec(call)

Responses: at most ``max_response_bytes`` of body (``--max-response-bytes``,
``DEFAULT_MAX_RESPONSE_BYTES``); a call whose sink is a ``StreamingSink``
goes over TryExec, so its response arrives in frames.
"""

from fnlb.transport._channel import CHANNEL_OPTIONS, KEEPALIVE_OPTIONS
from fnlb.transport._response import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_RESPONSE_BYTES_KEY,
    RESPONSE_TOO_LARGE,
    StreamingSink,
)
from fnlb.transport._tryexec import CHUNK_SIZE
from fnlb.transport.callstream import STREAM_MAX_BODY, CallStream, CallStreamFailed
from fnlb.transport.grpc_runner import (
    UNARY_MAX_BODY,
    GrpcRunner,
    make_runner_factory,
    status_from_pb,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "CHUNK_SIZE",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_RESPONSE_BYTES_KEY",
    "RESPONSE_TOO_LARGE",
    "KEEPALIVE_OPTIONS",
    "STREAM_MAX_BODY",
    "UNARY_MAX_BODY",
    "CallStream",
    "CallStreamFailed",
    "GrpcRunner",
    "StreamingSink",
    "make_runner_factory",
    "status_from_pb",
]
