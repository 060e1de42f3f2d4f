"""Distributed tracing of calls through the LB (the optional extra ``fnlb[otel]``).

``fnlb serve --otlp-endpoint HOST:PORT`` calls ``setup`` once; from then on
``enabled`` is True and the hooks in the call path make OpenTelemetry spans.
Until then (the default, and always without the extra) ``enabled`` is False:
every hook is one check of this module-level switch, and OpenTelemetry is
never imported. The spans (docs/design.md, Tracing)::

    fnlb.invoke   SERVER  one per front-door RPC; child of the client's W3C
    │                     ``traceparent`` request metadata when it sent one
    ├─ fnlb.queue         waiting in the overload queue for a turn
    └─ fnlb.attempt CLIENT one per runner tried: fnlb.runner, fnlb.outcome
       └─ runner.exec     in the runner, which continues the trace from the
                          attempt's traceparent (TryCall.extensions and gRPC metadata)

The hooks: ``server_interceptors`` (the front door's gRPC server),
``attempt`` (the placer's ``try_exec``), ``queued`` (the queue's wait),
``inject`` and ``metadata`` (what goes to the runner).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fnlb.errors import ConfigError, DoesNotFit, PassedOn, ServerTooBusy

if TYPE_CHECKING:
    from fnlb.otel import Otel, Span
    from fnlb.runnerpool import Attempt, Runner, RunnerCall

__all__ = [
    "INSTALL_HINT",
    "OUTCOMES",
    "attempt",
    "enabled",
    "inject",
    "load",
    "metadata",
    "outcome",
    "queued",
    "server_interceptors",
    "setup",
    "shutdown",
]

T = TypeVar("T")

INSTALL_HINT = "pip install 'fnlb[otel]'"

# fnlb.attempt's fnlb.outcome values (the contract of dashboards built on them).
OUTCOMES = ("committed", "nack", "passed_on", "unreachable", "does_not_fit", "canceled")

# The switch every hook checks; True only after setup().
enabled = False
_otel: Otel | None = None

_FRONT_SERVICE = "fnlb.v1.LoadBalancer"


def load(flag: str = "--otlp-endpoint") -> type[Otel]:
    """The OpenTelemetry layer, or a ConfigError saying how to install it."""
    try:
        from fnlb.otel import Otel
    except ImportError as e:
        raise ConfigError(f"{flag}: tracing needs OpenTelemetry, which is not installed "
                          f"({e.name or e}); {INSTALL_HINT}") from None
    return Otel


def setup(endpoint: str, service_name: str = "fnlb") -> None:
    """Export spans to ``endpoint`` over OTLP/gRPC from now on (once per process)."""
    global enabled, _otel
    _otel = load()(endpoint, service_name)
    enabled = True


def shutdown() -> None:
    """Export the spans still queued; tracing is off afterwards."""
    global enabled, _otel
    otel, _otel, enabled = _otel, None, False
    if otel is not None:
        otel.shutdown()


def _tracer() -> Otel:
    assert _otel is not None, "tracing hook called while tracing is off"
    return _otel


# -- what each attempt tells ------------------------------------------------------

def outcome(result: Attempt) -> str:
    """``fnlb.outcome`` of an attempt: committed, nack (the runner was busy),
    passed_on (slow start passed it on without asking the runner), unreachable,
    or does_not_fit (the runner has too little memory for it, ever)."""
    if result.placed:
        return "committed"
    err = result.error
    if isinstance(err, DoesNotFit):
        return "does_not_fit"
    if isinstance(err, PassedOn):
        return "passed_on"
    if isinstance(err, ServerTooBusy):
        return "nack"
    return "unreachable"


async def attempt(runner: Runner, call: RunnerCall) -> Attempt:
    """``runner.try_exec(call)`` inside an ``fnlb.attempt`` span (the runner sees it
    as the parent of its ``runner.exec``)."""
    otel = _tracer()
    with otel.span("fnlb.attempt", "client", attributes={
            "fnlb.runner": runner.address, "fnlb.call_id": call.model.id,
            "fnlb.attempt": call.attempts}) as span:
        try:
            result = await runner.try_exec(call)
        except asyncio.CancelledError:
            # The client's deadline or cancel ended the attempt.
            span.set_attribute("fnlb.outcome", "canceled")
            raise
        span.set_attribute("fnlb.outcome", outcome(result))
        if result.error is not None:
            span.set_attribute("fnlb.error", str(result.error))
            if result.placed:
                otel.fail(span, str(result.error))  # committed, then failed
        return result


async def queued(waiting: Awaitable[T]) -> T:
    """Await ``waiting`` (the overload queue's wait for a turn) inside an ``fnlb.queue`` span."""
    with _tracer().span("fnlb.queue"):
        return await waiting


def inject(carrier: MutableMapping[str, str]) -> None:
    """Put the current span's ``traceparent`` into ``carrier`` (a TryCall's extensions)."""
    _tracer().inject(carrier)


def metadata() -> tuple[tuple[str, str], ...]:
    """The current span's ``traceparent`` as gRPC metadata for a runner RPC."""
    return _tracer().metadata()


# -- the front door ------------------------------------------------------------------

def server_interceptors() -> list[grpc.aio.ServerInterceptor] | None:
    """What the front door's server needs: an ``fnlb.invoke`` span per call (None when off)."""
    return [_InvokeSpans(_tracer())] if enabled else None


class _InvokeSpans(grpc.aio.ServerInterceptor):
    """Wraps LoadBalancer's handlers in an ``fnlb.invoke`` span, continuing the
    client's trace from its ``traceparent`` metadata. The span is current while
    the handler runs, so placement's spans (same task) are its children."""

    def __init__(self, otel: Otel) -> None:
        self._otel = otel

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        service, _, name = method.lstrip("/").partition("/")
        if handler is None or service != _FRONT_SERVICE:
            return handler
        otel = self._otel
        parent = otel.from_metadata(details.invocation_metadata)
        base = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        def start(request: Any = None) -> AbstractContextManager[Span]:
            attrs: dict[str, Any] = dict(base)
            for field in ("fn_id", "app_id", "call_id"):
                value = getattr(request, field, "")  # a Malformed request has none
                if value:
                    attrs[f"fnlb.{field}"] = value
            return otel.span("fnlb.invoke", "server", parent, attrs)

        def ended(span: Span, context: Any, raised: bool) -> None:
            code = context.code()
            if not isinstance(code, grpc.StatusCode):
                # No status set: OK, unless the handler raised (gRPC says UNKNOWN).
                code = grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                otel.fail(span, f"{code.name}: {context.details() or ''}".rstrip(": "))

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                with start(request) as span:
                    try:
                        response = await inner(request, context)
                    except BaseException:
                        ended(span, context, raised=True)
                        raise
                    ended(span, context, raised=False)
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:
            stream_inner = handler.stream_stream

            async def stream(requests: Any, context: Any) -> Any:
                with start() as span:
                    try:
                        async for response in stream_inner(requests, context):
                            yield response
                    except BaseException:
                        ended(span, context, raised=True)
                        raise
                    ended(span, context, raised=False)

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
