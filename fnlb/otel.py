"""The OpenTelemetry layer that ``fnlb.tracing`` and ``runner_stub.tracing`` share.

Importing this module imports OpenTelemetry (the optional extra
``fnlb[otel]``); nothing imports it until ``--otlp-endpoint`` is given, so an
LB or runner without the flag neither loads nor pays for it. ``InvokeSpans``,
the front door's interceptor, lives here for the same reason.

    otel = Otel("collector:4317", "fnlb")       # spans go out over OTLP/gRPC
    with otel.span("fnlb.attempt", parent=otel.extract(metadata)) as span: ...
    otel.shutdown()                             # flush the spans still queued

Spans are batched (``BatchSpanProcessor``) and exported from its thread; the
OpenTelemetry environment variables apply as usual (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE``...). Propagation is W3C Trace Context
(``traceparent``, ``tracestate``) whatever ``OTEL_PROPAGATORS`` says: it is
the contract between the client, the LB and the runner.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

__all__ = ["InvokeSpans", "Otel", "Span"]

_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}


class Otel:
    """A tracer provider exporting to ``endpoint`` (``HOST:PORT`` plaintext, or an
    ``https://`` / ``http://`` URL), with W3C propagation in and out."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        secure_or_not = "://" in endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint,
                                    insecure=None if secure_or_not else True)
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        self._provider = TracerProvider(resource=Resource.create({"service.name": name}),
                                        shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("fnlb")
        self._propagator = TraceContextTextMapPropagator()
        self.fields = frozenset(self._propagator.fields)

    def extract(self, carrier: Mapping[str, str]) -> Context:
        """The remote parent that ``carrier`` (metadata, extensions) names, if any."""
        return self._propagator.extract(carrier)

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        """Write the current span's ``traceparent`` (and ``tracestate``) into ``carrier``."""
        self._propagator.inject(carrier)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The current span's context as gRPC metadata."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return tuple(carrier.items())

    def from_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
        """The remote parent named by gRPC request metadata, if any."""
        carrier = {k: v for k, v in metadata or () if k in self.fields and isinstance(v, str)}
        return self._propagator.extract(carrier)

    @contextmanager
    def span(self, name: str, kind: str = "internal", parent: Context | None = None,
             attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Span]:
        """A span of ``kind`` (server, client, internal), current while the block
        runs: a child of ``parent``, else of the current span. An exception marks
        it failed, without a traceback: most are expected (a cancel, an abort)."""
        with self._tracer.start_as_current_span(
                name, context=parent, kind=_KINDS[kind], attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as e:
                # A reason set in the block (e.g. the RPC's status) says more.
                status = getattr(span, "status", None)  # the SDK's spans have one
                if status is None or status.status_code is not StatusCode.ERROR:
                    self.fail(span, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                raise

    @staticmethod
    def current_span() -> Span:
        """The span current in this task (a no-op span when there is none)."""
        return get_current_span()

    @staticmethod
    def fail(span: Span, description: str) -> None:
        """Mark ``span`` as failed, with why."""
        span.set_status(Status(StatusCode.ERROR, description))

    def shutdown(self) -> None:
        """Export what is queued and stop (blocks up to the exporter's timeout)."""
        self._provider.shutdown()


class InvokeSpans(grpc.aio.ServerInterceptor):
    """Wraps the handlers of ``service`` (the LB's front door) in an ``fnlb.invoke``
    span, continuing the client's trace from its ``traceparent`` metadata. The
    span is current while the handler runs, so placement's spans (same task)
    are its children. Other services pass through untouched."""

    def __init__(self, otel: Otel, service: str) -> None:
        self._otel = otel
        self._service = service

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        service, _, name = method.lstrip("/").partition("/")
        if handler is None or service != self._service:
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

        def ended(span: Span, context: Any, error: BaseException | None = None) -> None:
            code = context.code()
            if not isinstance(code, grpc.StatusCode):
                # No status set: OK, or what gRPC makes of the handler's exception.
                code = (grpc.StatusCode.OK if error is None
                        else grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError)
                        else grpc.StatusCode.UNKNOWN)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                details = context.details()
                otel.fail(span, f"{code.name}: {details}" if details else code.name)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                with start(request) as span:
                    try:
                        response = await inner(request, context)
                    except BaseException as e:
                        ended(span, context, e)
                        raise
                    ended(span, context)
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
                    except BaseException as e:
                        ended(span, context, e)
                        raise
                    ended(span, context)

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
