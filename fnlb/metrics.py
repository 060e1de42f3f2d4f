"""Every LB metric, on an injected registry (docs/design.md §6 marks the contract names)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from fnlb.logs import kv
from fnlb.phases import PHASES

__all__ = ["Metrics", "MetricsServer", "SupervisorMetrics", "WorkerMetricsCollector",
           "CALL_STATUSES", "POOL_STATES"]

log = logging.getLogger(__name__)

CALL_STATUSES = ("completed", "canceled", "timeouts", "errors", "server_busy")
# fnlb_pool_runners{state}: "retiring" = removed, waiting for its in-flight calls.
# "suspect": not ejected, but its last probe or a call could not reach it.
POOL_STATES = ("healthy", "unknown", "suspect", "ejected", "draining", "retiring")
QUEUE_REJECT_REASONS = ("queue_full", "app_queue_full")

# Seconds; from sub-millisecond LB overhead up to fn's longest sync timeouts.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 360.0)
# fn's lb_placer_attempt_count distribution.
_ATTEMPT_BUCKETS = (1, 2, 3, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The LB's metrics. Pass a fresh ``CollectorRegistry`` per LB (tests do)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.call_latency = Histogram(
            "fnlb_call_latency_seconds",
            "Time the LB spent on a call, minus the time the function ran on the runner.",
            ["call_status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.runner_sched_latency = Histogram(
            "fnlb_runner_sched_latency_seconds",
            "Runner-reported scheduling latency (createdAt -> startedAt).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.runner_exec_latency = Histogram(
            "fnlb_runner_exec_latency_seconds",
            "Runner-reported execution latency (startedAt -> completedAt).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.placer_attempts = Histogram(
            "fnlb_placer_attempts", "Runners tried per call.",
            buckets=_ATTEMPT_BUCKETS, registry=r)
        self.placer_latency = Histogram(
            "fnlb_placer_latency_seconds",
            "Time in the placer loop, excluding the committed attempt's execution.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.placer_retries = Counter(
            "fnlb_placer_retries", "Attempts that did not place the call, by reason.",
            ["reason"], registry=r)
        self.placer_placed = Counter(
            "fnlb_placer_placed", "Calls committed on a runner, by outcome.",
            ["result"], registry=r)
        self.placer_timeouts = Counter(
            "fnlb_placer_timeouts", "Placements that ran out of placer timeout.", registry=r)
        self.placer_client_cancels = Counter(
            "fnlb_placer_client_cancels", "Placements ended by a client cancel.", registry=r)
        self.placer_client_timeouts = Counter(
            "fnlb_placer_client_timeouts", "Placements ended by the client deadline.",
            registry=r)
        self.pool_empty = Counter(
            "fnlb_pool_empty", "Times the pool offered no runner.", registry=r)
        self.pool_errors = Counter(
            "fnlb_pool_errors", "Times the pool failed to list runners.", registry=r)
        self.calls = Counter(
            "fnlb_calls", "Calls received at the front door.", ["type"], registry=r)
        self.calls_inflight = Gauge(
            "fnlb_calls_inflight", "Calls being handled by the LB.", registry=r)
        self.calls_completed = Counter(
            "fnlb_calls_completed", "Calls ended, by call_status.", ["call_status"], registry=r)
        self.malformed_requests = Counter(
            "fnlb_malformed_requests",
            "Front-door request messages that did not parse (answered INVALID_ARGUMENT).",
            registry=r)
        self.suspicious_latency = Counter(
            "fnlb_call_latency_suspicious",
            "Latency samples dropped because runner execution time >= LB latency.", registry=r)
        self.pool_runners = Gauge(
            "fnlb_pool_runners", "Runners in the pool, by state.", ["state"], registry=r)
        # Pool membership and health (fnlb.pools.dynamic). Labels are fixed sets.
        self.pool_changes = Counter(
            "fnlb_pool_membership_changes", "Runners added to or removed from the pool.",
            ["change"], registry=r)
        self.pool_runner_failures = Counter(
            "fnlb_pool_runner_failures",
            "Runner failures seen by health probes or by placement (busy NACKs excluded).",
            ["seen_by"], registry=r)
        self.pool_ejections = Counter(
            "fnlb_pool_ejections", "Runners ejected from placement, by what saw the last failure.",
            ["seen_by"], registry=r)
        self.pool_ejections_blocked = Counter(
            "fnlb_pool_ejections_blocked",
            "Ejections skipped because --max-ejection-percent was reached.", registry=r)
        self.pool_readmissions = Counter(
            "fnlb_pool_readmissions", "Ejected runners readmitted after recovering.", registry=r)
        self.pool_panic = Gauge(
            "fnlb_pool_panic",
            "1 while every runner is ejected and all are offered anyway (panic mode).",
            registry=r)
        self.pool_slow_start_skips = Counter(
            "fnlb_pool_slow_start_skips",
            "Attempts a ramping (slow start) runner passed on to the next runner.", registry=r)
        # Entries of the pool's per-runner tables, read at scrape time: they follow
        # the pool's size, whatever the churn (make bench-scale checks it).
        self.pool_table_entries = Gauge(
            "fnlb_pool_table_entries", "Entries in the LB's per-runner tables, by table.",
            ["table"], registry=r)
        self.discovery_errors = Counter(
            "fnlb_discovery_errors", "Failed lookups of a runner source (last set kept).",
            ["source"], registry=r)
        self.idempotent_retries = Counter(
            "fnlb_idempotent_retries",
            "Idempotent calls run again on another runner after theirs was lost.", registry=r)
        # The overload wait queue (fnlb.placers.queue): see docs/design.md.
        self.queue_depth = Gauge(
            "fnlb_queue_depth", "Calls waiting for a runner slot in the LB's queue.", registry=r)
        self.queue_wait = Histogram(
            "fnlb_queue_wait_seconds",
            "Time a call waited in the queue before its turn (or before it left).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_rejected = Counter(
            "fnlb_queue_rejected",
            "Calls shed at once (RESOURCE_EXHAUSTED) because the queue was at a bound.",
            ["reason"], registry=r)
        self.queue_rejected_by = {r: self.queue_rejected.labels(r)
                                  for r in QUEUE_REJECT_REASONS}
        # Where a call's time goes (fnlb.phases): see docs/design.md, Observability.
        self.call_phase = Histogram(
            "fnlb_call_phase_seconds",
            "Time a call spent in each phase (queue, placement, runner_wait, cold_start, "
            "image_pull, execution, transfer); observed for the calls that had the phase.",
            ["phase"], buckets=_LATENCY_BUCKETS, registry=r)
        self.call_phase_by = {p: self.call_phase.labels(p) for p in PHASES}
        self.call_overhead = Histogram(
            "fnlb_call_overhead_seconds",
            "Time the LB spent on a call (until the response was handed to the client) "
            "minus the function's execution, image pull and cold start on the runner.",
            ["call_status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.call_overhead_by = {s: self.call_overhead.labels(s) for s in CALL_STATUSES}
        self.access_log_suppressed = Counter(
            "fnlb_access_log_suppressed",
            "Access log lines left out by the rate limit (--access-log-rate).", registry=r)
        # fnlb.tls.CertExpiryWatch sets one child per role (front, runner_client),
        # computed when scraped.
        self.tls_cert_expiry = Gauge(
            "fnlb_tls_cert_expiry_seconds",
            "Seconds until the LB's certificate expires (negative once expired), by role: "
            "front (front door and Admin), runner_client (mTLS to runners).",
            ["role"], registry=r)
        for state in POOL_STATES:
            self.pool_runners.labels(state)
        for change in ("added", "removed"):
            self.pool_changes.labels(change)
        for seen_by in ("probe", "placement"):
            self.pool_runner_failures.labels(seen_by)
            self.pool_ejections.labels(seen_by)
        # Pre-created label sets: dashboards see zeros instead of missing series,
        # and the per-call path uses these children directly, since every
        # labels() lookup takes a lock and builds a key.
        self.call_latency_by = {s: self.call_latency.labels(s) for s in CALL_STATUSES}
        self.calls_completed_by = {s: self.calls_completed.labels(s) for s in CALL_STATUSES}
        self.placer_retries_by = {r: self.placer_retries.labels(r) for r in ("busy", "error")}
        self.placer_placed_by = {r: self.placer_placed.labels(r)
                                 for r in ("ok", "error", "abort")}
        self.calls_by_type = {t: self.calls.labels(t) for t in ("sync", "detached")}

    def queue_event(self, kind: str, app_id: str, waited_s: float) -> None:
        """The wait queue's observer: its events as metrics."""
        if kind in self.queue_rejected_by:
            self.queue_rejected_by[kind].inc()
        elif kind in ("granted", "timeout", "cancelled", "closed"):
            self.queue_wait.observe(waited_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SupervisorMetrics:
    """The ``fnlb serve --workers N`` supervisor's own metrics (workers' are merged in)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.workers = Gauge("fnlb_workers", "LB worker processes configured (--workers).",
                             registry=r)
        self.worker_up = Gauge(
            "fnlb_worker_up", "1 while the worker process runs and answered this scrape.",
            ["worker"], registry=r)
        self.worker_restarts = Counter(
            "fnlb_worker_restarts",
            "Times a worker process that exited unexpectedly was started again "
            "(failed attempts included).",
            ["worker"], registry=r)


class WorkerMetricsCollector(Collector):
    """Every worker's exposition as one, each sample labelled ``worker="i"``.

    ``update`` takes the texts of one scrape; ``collect`` re-exposes them with
    the same metric names (they are contract) and types. A family the workers
    describe differently keeps the first worker's help text.

        collector = WorkerMetricsCollector()
        registry.register(collector)
        collector.update({0: text0, 1: text1})
        generate_latest(registry)
    """

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}

    def update(self, texts: Mapping[int, str]) -> None:
        self._texts = dict(texts)

    def describe(self) -> list[Metric]:
        # Names vary with what the workers report: no registry-time name check.
        return []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in sorted(self._texts.items()):
            worker = str(index)
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError as e:
                log.warning("unparsable worker metrics", extra=kv(worker=worker, error=str(e)))
                continue
            for fam in families:
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                elif out.type != fam.type:
                    continue  # a worker of another version; never mix types in one family
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "worker": worker}, s.value,
                                   s.timestamp, s.exemplar)
        yield from merged.values()


Render = Callable[[], Awaitable[bytes]]


class MetricsServer:
    """A tiny asyncio HTTP server for ``GET /metrics`` (and ``/healthz``).

    asyncio rather than prometheus_client's threaded server: it lives on the LB's
    loop, binds port 0 and reports the real port, and stops with the LB.
    ``unix_path`` serves on a unix socket instead (a worker's private endpoint);
    ``source`` is the ``Metrics`` to render, or an async function producing the
    page (the supervisor's merged one).
    """

    def __init__(self, source: Metrics | Render, host: str = "", port: int = 0, *,
                 unix_path: str = "") -> None:
        self._render: Render
        if isinstance(source, Metrics):
            metrics = source

            async def render() -> bytes:
                return metrics.render()

            self._render = render
        else:
            self._render = source
        self._host, self._port = host, port
        self._unix_path = unix_path
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        if self._unix_path:
            self._server = await asyncio.start_unix_server(self._handle, self._unix_path)
            self.address = f"unix:{self._unix_path}"
            return
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        sock = self._server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await self._render()
            elif path in ("/healthz", "/"):
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + (body if parts and parts[0] != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.debug("metrics request failed", extra=kv(error=repr(e)))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
