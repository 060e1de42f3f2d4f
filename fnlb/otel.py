"""The OpenTelemetry layer that ``fnlb.tracing`` and ``runner_stub.tracing`` share.

Importing this module imports OpenTelemetry (the optional extra
``fnlb[otel]``); nothing imports it until ``--otlp-endpoint`` is given, so an
LB or runner without the flag neither loads nor pays for it.

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

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

__all__ = ["Otel", "Span"]

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
