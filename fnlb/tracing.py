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
from collections.abc import Awaitable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from fnlb.errors import ConfigError
from fnlb.phases import attempt_outcome

if TYPE_CHECKING:
    from fnlb.otel import Otel
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

# The span's words where they differ from the trailer's (fnlb.phases.attempt_outcome):
# a try the client's deadline ended was still committed; any other failure that
# did not place the call is "unreachable".
_SPAN_OUTCOME = {"passed": "passed_on", "timeout": "committed", "error": "unreachable"}


def outcome(result: Attempt) -> str:
    """``fnlb.outcome`` of an attempt: committed, nack (the runner was busy),
    passed_on (slow start passed it on without asking the runner), unreachable,
    or does_not_fit (the runner has too little memory for it, ever)."""
    word = attempt_outcome(result.placed, result.error)
    return _SPAN_OUTCOME.get(word, word)


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

def server_interceptors() -> list[Any] | None:
    """The front door server's interceptors: one that makes an ``fnlb.invoke`` span
    per LoadBalancer RPC when tracing is on; None when off."""
    if not enabled:
        return None
    from fnlb.otel import InvokeSpans

    return [InvokeSpans(_tracer(), _FRONT_SERVICE)]
