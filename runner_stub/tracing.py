"""The stub's side of distributed tracing: a ``runner.exec`` span per call.

``runner-stub --otlp-endpoint HOST:PORT`` calls ``setup``; until then
``enabled`` is False, the hooks in ``runner_stub.server`` are one check of it
each, and OpenTelemetry is never imported (it is the optional extra
``fnlb[otel]``; ``fnlb.otel`` is the layer shared with the LB).

Each try the stub serves (TryExec, Call, or one call on the Calls stream) is
one ``runner.exec`` span, a child of the LB's ``fnlb.attempt``: its
``traceparent`` comes in ``TryCall.extensions`` (every RPC shape), else in
the request's gRPC metadata (not on Calls: one stream carries many calls).
The ``finished`` the stub sends names the outcome (``runner.outcome``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fnlb.v1 import runner_pb2

if TYPE_CHECKING:
    from fnlb.otel import Otel

__all__ = ["enabled", "finished", "outcome", "serve", "setup", "shutdown"]

IO = TypeVar("IO")

# The switch every hook checks; True only after setup().
enabled = False
_otel: Otel | None = None


def setup(endpoint: str, service_name: str = "runner-stub") -> None:
    """Export spans to ``endpoint`` over OTLP/gRPC; a ConfigError says how to
    install OpenTelemetry when it is missing."""
    global enabled, _otel
    from fnlb.tracing import load

    _otel = load()(endpoint, service_name)
    enabled = True


def shutdown() -> None:
    """Export the spans still queued; tracing is off afterwards."""
    global enabled, _otel
    otel, _otel, enabled = _otel, None, False
    if otel is not None:
        otel.shutdown()


def outcome(fin: runner_pb2.CallFinished) -> str:
    """``runner.outcome`` of a call from the ``finished`` sent for it: completed,
    nack (busy, 503), does_not_fit (507), or failed."""
    if fin.success:
        return "completed"
    return {503: "nack", 507: "does_not_fit"}.get(fin.errorCode, "failed")


async def serve(run: Callable[[runner_pb2.TryCall, Any, IO], Awaitable[None]],
                method: str, tc: runner_pb2.TryCall, created: Any, io: IO,
                context: Any | None) -> None:
    """``run(tc, created, io)`` inside a ``runner.exec`` span that continues the
    caller's trace."""
    otel = _otel
    assert otel is not None, "tracing hook called while tracing is off"
    if otel.fields & tc.extensions.keys():
        parent = otel.extract(tc.extensions)
    else:
        parent = otel.from_metadata(None if context is None else context.invocation_metadata())
    with otel.span("runner.exec", "server", parent,
                   {"rpc.system": "grpc", "rpc.service": "fnlb.v1.Runner",
                    "rpc.method": method}) as span:
        try:
            await run(tc, created, io)
        except asyncio.CancelledError:
            span.set_attribute("runner.outcome", "canceled")  # the LB went away
            raise


def finished(fin: runner_pb2.CallFinished) -> None:
    """Record the ``finished`` being sent on the current ``runner.exec`` span."""
    assert _otel is not None, "tracing hook called while tracing is off"
    span = _otel.current_span()
    if not span.is_recording():
        return  # no span, or it ended (a detached call that outlived its stream)
    result = outcome(fin)
    span.set_attribute("runner.outcome", result)
    if fin.details:
        span.set_attribute("fnlb.call_id", fin.details)  # the stub puts the call id there
    if not fin.success:
        span.set_attribute("runner.error_code", fin.errorCode)
        if result == "failed":
            _otel.fail(span, f"{fin.errorCode}: {fin.errorStr}")
