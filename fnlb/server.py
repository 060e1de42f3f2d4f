"""The LB process: front door (LoadBalancer), admin (Admin), health, reflection, metrics.

Three listeners: ``--listen`` (clients: LoadBalancer, health, reflection),
``--admin-listen`` (operators and self-registering runners: Admin, health,
reflection; loopback by default, so the pool cannot be changed from the
clients' network), ``--metrics-listen`` (Prometheus).

A worker of ``fnlb serve --workers N`` (``fnlb.workers``) binds ``--listen``
with SO_REUSEPORT beside its siblings, and serves Admin and metrics on private
unix sockets for the supervisor instead of the public addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fnlb import tracing
from fnlb.admin import AdminServicer, admin_policy
from fnlb.agent import Agent
from fnlb.config import LBConfig, split_hostport
from fnlb.drain import Drain
from fnlb.errors import ConfigError, ShuttingDown
from fnlb.front import LoadBalancerServicer, add_load_balancer
from fnlb.logs import kv
from fnlb.metrics import Metrics, MetricsServer
from fnlb.placers import make_placer
from fnlb.placers.capacity import Capacity
from fnlb.placers.load import LoadTracker
from fnlb.placers.queue import WaitQueue
from fnlb.pools import DynamicRunnerPool, make_sources
from fnlb.runnerpool import (
    MTLSRunnerFactory,
    Placer,
    RunnerPool,
)
from fnlb.transport import make_runner_factory
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["LBServer", "serve_admin", "start_metrics"]

if TYPE_CHECKING:
    from fnlb.tls import CertExpiryWatch, ClientTLS, ReloadingServerCredentials

log = logging.getLogger(__name__)

# How long before the drain grace ends calls still queued are answered UNAVAILABLE.
_QUEUE_CLOSE_MARGIN_S = 0.25
# Front door: room above --max-request-bytes for protobuf framing.
_RECEIVE_HEADROOM = 64 * 1024
# After --max-connection-age, a connection's open calls get this long to
# finish: above the longest function timeout (3,600 s) plus placing time.
_CONNECTION_AGE_GRACE_MS = 70 * 60 * 1000


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(server: grpc.aio.Server, flag: str, host: str, port: int,
          creds: grpc.ServerCredentials | None = None) -> int:
    """Bind a port; a failure is a startup error that names the flag."""
    addr = f"{host}:{port}"
    try:
        bound = (server.add_secure_port(addr, creds) if creds is not None
                 else server.add_insecure_port(addr))
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"{flag} {addr}: cannot bind (address in use, or not an address "
                          "of this machine)")
    return int(bound)


async def start_metrics(server: MetricsServer, where: str) -> None:
    """Start ``server``; a failure to bind is a startup error that names the flag."""
    try:
        await server.start()
    except (OSError, UnicodeError) as e:  # UnicodeError: a host name IDNA cannot encode
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise ConfigError(f"{where}: cannot bind: {reason}") from None


async def serve_admin(servicer: lb_pb2_grpc.AdminServicer,
                      health_servicer: health.aio.HealthServicer,
                      listen: str, front_tls: ReloadingServerCredentials | None, *,
                      unix_path: str = "") -> tuple[grpc.aio.Server, str]:
    """Start an ``fnlb.v1.Admin`` server (with health and reflection); (server, address).

    On ``listen`` it uses the front door's TLS (``front_tls``, a
    ``ReloadingServerCredentials`` or None); on ``unix_path`` (a worker's private
    endpoint, in a directory only the LB's user can enter) it is plaintext.
    """
    # Admin messages are a few hundred bytes: a 64 KiB cap keeps a huge request
    # (e.g. a 1 MiB host name) from being read at all.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 64 * 1024)])
    lb_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((
        lb_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ), server)
    if unix_path:
        if not server.add_insecure_port(f"unix:{unix_path}"):
            raise ConfigError(f"cannot bind the private admin socket {unix_path}")
        address = f"unix:{unix_path}"
    else:
        host, port = split_hostport(listen, "--admin-listen")
        if front_tls is not None:
            # The front door's certificate, and its client CA when one is set:
            # with --front-tls-ca only holders of a client certificate get in.
            bound = _bind(server, "--admin-listen", host, port, front_tls.credentials())
        else:
            bound = _bind(server, "--admin-listen", host, port)
        if not (front_tls is not None and front_tls.require_client_auth) \
                and not _is_loopback(host):
            log.warning("admin API is reachable from the network without client "
                        "certificates: set --front-tls-ca, or --admin-listen 127.0.0.1:PORT",
                        extra=kv(admin_addr=f"{host}:{bound}"))
        address = f"{host}:{bound}"
    await server.start()
    for name in ("", "fnlb.v1.Admin"):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, address


class LBServer:
    """The LB process's servers. ``async with LBServer(cfg) as lb: ...``.

    ``stop(grace)`` may be called more than once; the shortest grace wins.
    """

    def __init__(self, config: LBConfig, *, metrics: Metrics | None = None,
                 pool: RunnerPool | None = None,
                 runner_factory: MTLSRunnerFactory | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self._factory = runner_factory
        self.pool = pool
        self.placer: Placer | None = None  # made by start()
        self._server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._admin_health = health.aio.HealthServicer()
        self._metrics_server: MetricsServer | None = None
        self._health = health.aio.HealthServicer()
        self._stopping: asyncio.Task[None] | None = None
        self.address = ""
        self.metrics_address = ""
        self.admin_address = ""
        self.front_tls: ReloadingServerCredentials | None = None
        self.capacity: Capacity | None = None
        self._drain = Drain()
        self._drain_deadline: float | None = None
        self._drain_grace = 0.0  # the shortest grace asked for: the one that runs
        self._drain_hurry = asyncio.Event()
        self.runner_tls: ClientTLS | None = None
        self._cert_expiry: CertExpiryWatch | None = None

    def reload_tls(self) -> None:
        """SIGHUP: re-read certificates. New connections use them; live calls are untouched."""
        for tls in (self.front_tls, self.runner_tls):
            if tls is not None:
                tls.reload()

    def _build_pool(self, load: LoadTracker) -> DynamicRunnerPool:
        cfg = self.config
        factory = self._factory or make_runner_factory(
            self.metrics, cfg.connect_timeout, cfg.runner_server_name or None,
            accept_timeout=cfg.accept_timeout or None,
            max_response_bytes=cfg.max_response_bytes, protocol=cfg.runner_protocol)
        tls = None
        if cfg.runner_tls is not None:
            from fnlb.tls import ClientTLS, TLSFiles

            self.runner_tls = ClientTLS(
                TLSFiles(cfg.runner_tls.cert, cfg.runner_tls.key, cfg.runner_tls.ca))
            tls = self.runner_tls
            log.info("mTLS to runners", extra=kv(
                cert=cfg.runner_tls.cert, subject=tls.material.subject,
                not_after=tls.material.not_after.isoformat(),
                server_name=cfg.runner_server_name or "(runner address)"))
        else:
            log.warning("runner connections are plaintext: use --tls-cert/--tls-key/--tls-ca "
                        "for mTLS to runners")
        sources = make_sources(cfg.runners, cfg.runners_file, cfg.discovery,
                               file_interval=cfg.runners_file_interval,
                               discovery_interval=cfg.discovery_interval)
        return DynamicRunnerPool(factory, tls, sources=sources, health=cfg.health,
                                 metrics=self.metrics, load=load)

    def _build_capacity(self, load: LoadTracker, pool: RunnerPool) -> Capacity | None:
        """The overload wait queue (``--queue on``) over the pool's offered runners."""
        if not self.config.queue:
            log.info("overload queue off (--queue off): busy calls sweep the runners "
                     "every --retry-all-delay, as fn does")
            return None
        if not isinstance(pool, DynamicRunnerPool):
            return None  # an embedded pool of another kind: fn's sweep
        queue = WaitQueue(self.config.queue_config, on_event=self.metrics.queue_event)
        self.metrics.queue_depth.set_function(queue.depth)
        capacity = Capacity(load, queue, pool.snapshot)
        pool.subscribe(capacity.changed)
        return capacity

    async def start(self) -> None:
        """Start the pool, then the servers; a failure stops whatever had started."""
        try:
            await self._start()
        except BaseException:
            # Left running, a grpc server shuts itself down from __del__ once the
            # event loop is closed and prints a traceback under the error that
            # made the start fail; that error must be the last thing printed.
            await self._undo_start()
            raise

    async def _undo_start(self) -> None:
        await self._stop_cert_expiry()
        servers = [s for s in (self._admin_server, self._server) if s is not None]
        self._admin_server = self._server = None
        for server in servers:
            await server.stop(None)
        metrics, self._metrics_server = self._metrics_server, None
        if metrics is not None:
            await metrics.stop()
        if self.pool is not None:
            await self.pool.shutdown()

    async def _start(self) -> None:
        cfg = self.config
        # One load view shared by the placer (its in-flight counts) and the pool's
        # Status polls; a report stays fresh for two polls, so one slow poll
        # does not blind load-aware placers.
        load = LoadTracker(fresh_for=2 * cfg.health.interval + cfg.health.timeout)
        if self.pool is None:
            self.pool = self._build_pool(load)
        self.capacity = self._build_capacity(load, self.pool)
        placer = make_placer(cfg.placer, cfg.placer_config, self.metrics, load=load,
                             c=cfg.chbl_c, capacity=self.capacity,
                             idempotent_retries=cfg.idempotent_retries)
        self.placer = placer
        start_pool = getattr(self.pool, "start", None)
        if start_pool is not None:
            await start_pool()  # first lookups; a bad --runners-file stops us here
        agent = Agent(self.pool, placer, self.metrics)
        # A little room above --max-request-bytes (protobuf framing) so a too-big
        # request gets our clear INVALID_ARGUMENT naming the limit instead of
        # gRPC's RESOURCE_EXHAUSTED "Received message larger than max"; an
        # Invoke response holds up to --max-response-bytes of body plus headers.
        max_msg = cfg.request_limit + _RECEIVE_HEADROOM
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_msg),
            ("grpc.max_send_message_length", cfg.max_response_bytes + (1 << 20)),
            # Off unless a supervisor runs workers on this port: with it on, a
            # second LB on the same port would silently share it instead of
            # failing with "address in use".
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
            # gRPC core holds the calls that arrived before the aio server asked
            # for them (one at a time) and by default drops them at random from
            # 1,000 waiting, all from 3,000: the client gets a bare CANCELLED and
            # no handler, log or metric of ours sees the call (bench/burst.py).
            # Take every call in and let the LB shed with a status of its own;
            # 100,000 only guards memory.
            ("grpc.server.max_pending_requests", 100_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ]
        # Per-connection bounds (README, Security model): streams beyond the cap
        # wait in the client's transport; idle and old connections get GOAWAY
        # (clients reconnect), the old ones' calls finish within the age grace.
        if cfg.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", cfg.max_concurrent_streams))
        if cfg.max_connection_idle:
            options.append(("grpc.max_connection_idle_ms", int(cfg.max_connection_idle * 1000)))
        if cfg.max_connection_age:
            options += [("grpc.max_connection_age_ms", int(cfg.max_connection_age * 1000)),
                        ("grpc.max_connection_age_grace_ms", _CONNECTION_AGE_GRACE_MS)]
        server = grpc.aio.server(options=options, interceptors=tracing.server_interceptors())
        add_load_balancer(LoadBalancerServicer(agent, cfg, self._drain), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (
            lb_pb2.DESCRIPTOR.services_by_name["LoadBalancer"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        host, port = split_hostport(cfg.listen, "--listen")
        if cfg.front_tls is not None:
            from fnlb.tls import ReloadingServerCredentials, TLSFiles

            self.front_tls = ReloadingServerCredentials(
                TLSFiles(cfg.front_tls.cert, cfg.front_tls.key, cfg.front_tls.ca),
                require_client_auth=cfg.front_tls.ca is not None)
            bound = _bind(server, "--listen", host, port, self.front_tls.credentials())
        else:
            bound = _bind(server, "--listen", host, port)
        await server.start()
        self._server = server
        self.address = f"{host}:{bound}"
        if (cfg.admin_listen or cfg.admin_unix) and isinstance(self.pool, DynamicRunnerPool):
            self._admin_server, self.admin_address = await serve_admin(
                AdminServicer(self.pool, cfg.placer, admin_policy(cfg)), self._admin_health,
                cfg.admin_listen, self.front_tls, unix_path=cfg.admin_unix)
        if cfg.metrics_listen or cfg.metrics_unix:
            mhost, mport = (split_hostport(cfg.metrics_listen, "--metrics-listen")
                            if cfg.metrics_listen else ("", 0))
            self._metrics_server = MetricsServer(self.metrics, mhost, mport,
                                                 unix_path=cfg.metrics_unix)
            await start_metrics(self._metrics_server,
                                f"the private metrics socket {cfg.metrics_unix}"
                                if cfg.metrics_unix else f"--metrics-listen {cfg.metrics_listen}")
            self.metrics_address = self._metrics_server.address
        if self.front_tls is not None or self.runner_tls is not None:
            from fnlb.tls import CertExpiryWatch

            self._cert_expiry = CertExpiryWatch(
                {"front": self.front_tls, "runner_client": self.runner_tls},
                gauge=self.metrics.tls_cert_expiry)
            self._cert_expiry.start()  # logs now and daily; warns under 7 days
        for name in ("", "fnlb.v1.LoadBalancer"):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # A worker says so in its own words: "msg=listening" is the supervisor's
        # line once every worker is up (scripts and tests wait for it).
        log.info("listening" if cfg.worker_index is None else "worker listening",
                 extra=kv(addr=self.address, metrics_addr=self.metrics_address,
                          admin_addr=self.admin_address, placer=cfg.placer,
                          tls=cfg.front_tls is not None))

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, let in-flight ones finish for ``grace`` s, close.

        The listener stays open while the grace lasts, so new calls get a clear
        UNAVAILABLE ("draining") rather than "connection refused"; calls still
        running when it ends are cut with UNAVAILABLE saying so. May be called
        again (a second signal): the shortest grace wins.
        """
        if self._server is None:
            return
        if grace is None:
            grace = self.config.drain_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
            self._drain_grace = grace
            self._drain_hurry.set()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain_and_close(grace))
        await asyncio.shield(self._stopping)

    async def _drain_and_close(self, grace: float) -> None:
        assert self._server is not None and self._drain_deadline is not None
        loop = asyncio.get_running_loop()
        self._drain.begin()
        await self._health.enter_graceful_shutdown()
        log.info("draining", extra=kv(grace_s=grace, inflight=len(self._drain)))
        if self._admin_server is not None:
            # Membership is frozen while calls drain; admin calls are short.
            await self._admin_health.enter_graceful_shutdown()
            await self._admin_server.stop(min(grace, 1.0))
        queue = self.capacity.queue if self.capacity is not None else None
        while True:
            self._drain_hurry.clear()
            left = self._drain_deadline - loop.time()
            if queue is not None and left <= _QUEUE_CLOSE_MARGIN_S:
                # Queued calls could still get a runner while the grace lasted;
                # those still waiting now ran nowhere: a clear UNAVAILABLE.
                queue.close(ShuttingDown)
                queue = None
            if not len(self._drain) or left <= 0:
                break
            until = left - _QUEUE_CLOSE_MARGIN_S if queue is not None else left
            idle = asyncio.ensure_future(self._drain.wait_idle(until))
            hurry = asyncio.ensure_future(self._drain_hurry.wait())
            await asyncio.wait((idle, hurry), return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            hurry.cancel()
        if len(self._drain):
            cut = self._drain.cut(
                f"LB shut down before the call finished (drain grace {self._drain_grace:g}s "
                "ran out: --drain-grace, or shorter after a second signal); "
                "it may have run on its runner")
            log.warning("drain grace over: cutting calls still running", extra=kv(calls=cut))
            await self._drain.wait_idle(1.0)  # their handlers answer the clients
        await self._server.stop(0)
        await self._close_rest()

    async def _stop_cert_expiry(self) -> None:
        if self._cert_expiry is not None:
            await self._cert_expiry.stop()

    async def _close_rest(self) -> None:
        await self._stop_cert_expiry()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self.pool is not None:
            await self.pool.shutdown()
        log.info("stopped")

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    async def __aenter__(self) -> LBServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop(0)
