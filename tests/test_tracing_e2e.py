"""Distributed tracing end to end: a real LB and a real runner stub export their
spans over OTLP/gRPC to a real OTLP receiver served by this test.

One call carries the client's W3C ``traceparent``; its spans must all be in
that trace and link up: the client's span -> fnlb.invoke -> fnlb.queue and
fnlb.attempt -> runner.exec. The runner is made to NACK the first attempt
(its memory is taken by another call while it has a free slot), so the trace
also shows an attempt with outcome nack, the wait for a turn, and the
committed attempt. Without the extra installed, ``--otlp-endpoint`` fails
with the install hint and the LB never imports OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from fnlb import harness
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2, runner_pb2_grpc

pytestmark = pytest.mark.slow

# Export every 50 ms instead of every 5 s.
OTEL_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attrs: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0
    error: str | None = None  # the status message when the span failed


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.arrived = asyncio.Event()

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(Span(
                        res.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                        s.parent_span_id.hex(), {a.key: _value(a.value) for a in s.attributes},
                        s.start_time_unix_nano, s.end_time_unix_nano,
                        s.status.message if s.status.code == s.status.STATUS_CODE_ERROR
                        else None))
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


def tree(spans: list[Span]) -> str:
    """The spans as an indented tree (for failure messages)."""
    spans = sorted(spans, key=lambda s: s.start_ns)
    ids = {s.span_id for s in spans}
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in spans:
            if s.parent_id == parent or (depth == 0 and s.parent_id not in ids and not parent):
                keep = {k: v for k, v in s.attrs.items() if k.startswith(("fnlb.", "runner."))}
                ms = (s.end_ns - s.start_ns) / 1e6
                lines.append(f"{'  ' * depth}{s.name} [{s.service}] {ms:.1f}ms {keep}")
                walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    receiver = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _memory_taken(stub: runner_pb2_grpc.RunnerStub) -> bool:
    status = await stub.Status(empty_pb2.Empty(), timeout=2)
    return bool(status.memory_mb_free == 0)


async def _reported(admin: lb_pb2_grpc.AdminStub) -> bool:
    listed = await admin.ListRunners(lb_pb2.ListRunnersRequest(), timeout=2)
    return any(r.slots_total == 2 for r in listed.runners)


async def test_one_trace_from_client_through_lb_to_runner() -> None:
    async with otlp_receiver() as (receiver, endpoint):
        with harness.ProcGroup() as group:
            # Two slots but memory for one 256 MiB call: while it runs, the LB
            # believes a slot free, and the runner NACKs for want of memory.
            stub_proc = group.start("runner_stub", [
                "--listen", "127.0.0.1:0", "--slots", "2", "--memory-mb", "256",
                "--nack-after-ms", "10", "--otlp-endpoint", endpoint], OTEL_ENV)
            lb = group.start("fnlb", [
                "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                "--admin-listen", "127.0.0.1:0", "--runners", stub_proc.addr,
                "--health-interval", "300ms", "--otlp-endpoint", endpoint], OTEL_ENV)
            async with grpc.aio.insecure_channel(lb.addr) as ch, \
                    grpc.aio.insecure_channel(lb.fields["admin_addr"]) as admin_ch, \
                    grpc.aio.insecure_channel(stub_proc.addr) as stub_ch:
                front = lb_pb2_grpc.LoadBalancerStub(ch)
                runner = runner_pb2_grpc.RunnerStub(stub_ch)
                # Capacity is known (a report came): the LB queues rather than sweeps.
                await harness.wait_until(lambda: _reported(lb_pb2_grpc.AdminStub(admin_ch)),
                                         what="a Status report with slot counts")
                big = asyncio.ensure_future(front.Invoke(lb_pb2.InvokeRequest(
                    fn_id="big", app_id="app", memory_mb=256,
                    config={"sleep_ms": "600"}), timeout=10))
                await harness.wait_until(lambda: _memory_taken(runner),
                                         what="the big call holding the runner's memory")
                trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
                traced = await front.Invoke(
                    lb_pb2.InvokeRequest(fn_id="traced", app_id="app", body=b"hi"),
                    metadata=(("traceparent", f"00-{trace_id}-{client_span}-01"),), timeout=10)
                await big
                # InvokeStream: the same spans, over TryExec on the runner.
                stream_trace = secrets.token_hex(16)
                streamed = [m async for m in front.InvokeStream(
                    iter([lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(
                        fn_id="streamed", app_id="app", body=b"yo"))]),
                    metadata=(("traceparent", f"00-{stream_trace}-{client_span}-01"),),
                    timeout=10)]
                # A call the front door refuses: its span carries the status.
                bad_trace = secrets.token_hex(16)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await front.Invoke(lb_pb2.InvokeRequest(fn_id=""), timeout=10, metadata=(
                        ("traceparent", f"00-{bad_trace}-{client_span}-01"),))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert b"".join(m.data for m in streamed) == b"yo"
            assert traced.body == b"hi"
            assert traced.attempts >= 2, "the first attempt was to be NACKed"
            # Every process flushes its spans as it stops; the receiver answers
            # on this loop meanwhile.
            await asyncio.to_thread(group.close)
        spans = receiver.in_trace(trace_id)
        stream_spans = receiver.in_trace(stream_trace)
        [refused_span] = receiver.in_trace(bad_trace)

    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert set(by_name) == {"fnlb.invoke", "fnlb.queue", "fnlb.attempt", "runner.exec"}, tree(spans)
    [invoke] = by_name["fnlb.invoke"]
    assert invoke.service == "fnlb" and invoke.parent_id == client_span
    assert invoke.attrs["fnlb.fn_id"] == "traced"
    assert invoke.attrs["rpc.grpc.status_code"] == 0
    assert all(q.parent_id == invoke.span_id for q in by_name["fnlb.queue"])
    attempts = by_name["fnlb.attempt"]
    assert all(a.parent_id == invoke.span_id for a in attempts)
    assert all(a.attrs["fnlb.runner"] == stub_proc.addr for a in attempts)
    outcomes = sorted(a.attrs["fnlb.outcome"] for a in attempts)
    assert outcomes.count("committed") == 1 and "nack" in outcomes, tree(spans)
    assert set(outcomes) <= {"committed", "nack"}, tree(spans)
    # The runner continued the trace under each attempt it was sent.
    execs = by_name["runner.exec"]
    assert all(e.service == "runner-stub" for e in execs)
    parent_of = {e.parent_id: e for e in execs}
    for a in attempts:
        e = parent_of[a.span_id]
        assert e.attrs["runner.outcome"] == {"nack": "nack", "committed": "completed"}[
            a.attrs["fnlb.outcome"]]
        assert e.attrs["fnlb.call_id"] == traced.call_id == a.attrs["fnlb.call_id"]
    assert len(execs) == len(attempts)
    # InvokeStream's call: invoke -> attempt -> runner.exec over TryExec.
    names = {s.name: s for s in stream_spans}
    assert set(names) == {"fnlb.invoke", "fnlb.attempt", "runner.exec"}, tree(stream_spans)
    assert names["fnlb.invoke"].attrs["rpc.method"] == "InvokeStream"
    assert names["fnlb.invoke"].parent_id == client_span
    assert names["fnlb.attempt"].parent_id == names["fnlb.invoke"].span_id
    assert names["runner.exec"].parent_id == names["fnlb.attempt"].span_id
    assert names["runner.exec"].attrs["rpc.method"] == "TryExec"
    assert refused_span.name == "fnlb.invoke"
    assert refused_span.attrs["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused_span.error == "INVALID_ARGUMENT: fn_id: required"
    assert invoke.error is None
    # The other call started a trace of its own.
    assert {s.trace_id for s in receiver.spans if s.attrs.get("fnlb.fn_id") == "big"} - {trace_id}


async def test_runner_continues_a_trace_from_grpc_metadata() -> None:
    """A caller that sends ``traceparent`` only as gRPC metadata (no extensions)."""
    async with otlp_receiver() as (receiver, endpoint):
        with harness.ProcGroup() as group:
            stub_proc = group.start("runner_stub", [
                "--listen", "127.0.0.1:0", "--otlp-endpoint", endpoint], OTEL_ENV)
            trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
            call = {"id": uuid.uuid4().hex, "fn_id": "echo", "app_id": "app", "type": "sync"}
            request = runner_pb2.CallRequest(**{"try": runner_pb2.TryCall(  # type: ignore[arg-type]
                models_call_json=json.dumps(call))}, body=b"x")
            async with grpc.aio.insecure_channel(stub_proc.addr) as ch:
                reply = await runner_pb2_grpc.RunnerStub(ch).Call(
                    request, metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),), timeout=5)
            assert reply.finished.success
            await asyncio.to_thread(group.close)
        [span] = receiver.in_trace(trace_id)
    assert (span.name, span.parent_id, span.attrs["rpc.method"]) == ("runner.exec", parent, "Call")
    assert span.attrs["runner.outcome"] == "completed" and span.attrs["fnlb.call_id"] == call["id"]


# -- without the extra -----------------------------------------------------------------

def _without_otel(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import opentelemetry`` fails, as if not installed."""
    hidden = tmp_path / "hide-otel" / "opentelemetry"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'opentelemetry'\", name='opentelemetry')\n")
    path = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("argv", [
    ["-m", "fnlb", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
     "--admin-listen", "", "--runners", "127.0.0.1:1", "--otlp-endpoint", "127.0.0.1:4317"],
    ["-m", "runner_stub", "--listen", "127.0.0.1:0", "--otlp-endpoint", "127.0.0.1:4317"],
], ids=["fnlb-serve", "runner-stub"])
def test_flag_without_the_extra_says_how_to_install_it(tmp_path: Path, argv: list[str]) -> None:
    done = subprocess.run([sys.executable, *argv], env=_without_otel(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "--otlp-endpoint" in done.stderr and "pip install 'fnlb[otel]'" in done.stderr, \
        done.stderr


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    """Without the flag, nothing in the call path imports OpenTelemetry (it would
    fail here: the environment hides it), so an LB without the extra runs as before."""
    code = ("import sys, fnlb.cli, fnlb.server, fnlb.tracing, runner_stub.cli, runner_stub.server\n"
            "from fnlb import tracing\n"
            "assert not tracing.enabled and tracing.server_interceptors() is None\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    done = subprocess.run([sys.executable, "-c", code], env=_without_otel(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
