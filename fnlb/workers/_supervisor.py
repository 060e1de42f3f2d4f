"""The supervisor of ``fnlb serve --workers N`` (see ``fnlb.workers``): it starts the
workers, restarts one that dies, drains them on a signal, and serves the public
admin and metrics addresses for all of them.

    sup = Supervisor(cfg, ["--listen", "0.0.0.0:9090", "--runners", "r1:9190"])
    await sup.start()
    ...
    await sup.stop(grace=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health
from prometheus_client import generate_latest

from fnlb._admin_fanout import FanOutAdminServicer
from fnlb.admin import admin_policy
from fnlb.config import LBConfig, split_hostport
from fnlb.errors import ConfigError
from fnlb.logs import kv
from fnlb.metrics import MetricsServer, SupervisorMetrics, WorkerMetricsCollector
from fnlb.placers import make_placer
from fnlb.server import serve_admin, start_metrics
from fnlb.v1 import lb_pb2_grpc
from fnlb.workers._worker import READY, WorkerPaths

__all__ = ["Supervisor", "WorkerStartError", "check_port_free"]

# The package's one logger, as when it was one module.
log = logging.getLogger("fnlb.workers")

# Past --drain-grace: the worker still closes its runner connections and pool.
_STOP_MARGIN_S = 10.0
_SCRAPE_TIMEOUT_S = 5.0
# A worker that ran this long before dying restarts at the shortest back-off.
_STABLE_AFTER_S = 60.0


def check_port_free(listen: str, flag: str = "--listen") -> None:
    """Fail if something already listens on ``listen``.

    The workers bind with SO_REUSEPORT, which would let a second supervisor (same
    user) share the port silently; this plain bind fails instead while anyone
    listens there, as a single LB's bind does.
    """
    host, port = split_hostport(listen, flag)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{flag} {listen}: cannot resolve {host!r}: {e}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                raise ConfigError(f"{flag} {listen}: cannot bind (address in use, or not an "
                                  f"address of this machine): {e.strerror}") from None


class WorkerStartError(ConfigError):
    """A worker exited (or hung) before it was ready; or, from ``Supervisor.error``,
    one kept failing to start again."""


@dataclass(eq=False)
class _Worker:
    index: int
    paths: WorkerPaths
    proc: asyncio.subprocess.Process | None = None
    link: asyncio.StreamWriter | None = None
    channel: grpc.aio.Channel | None = None
    admin: Any = None  # fnlb.v1.Admin stub while the worker is up
    started_at: float = 0.0
    returncode: int | None = None
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Run ``config.workers`` LB workers sharing ``config.listen``.

    ``worker_args`` are the ``fnlb serve`` arguments the workers are started
    with (the supervisor's own), to which it appends the hidden worker flags.
    ``stop(grace)`` may be called more than once; ``kill()`` is the second signal.
    """

    def __init__(self, config: LBConfig, worker_args: Sequence[str], *,
                 metrics: SupervisorMetrics | None = None, python: str = sys.executable,
                 ready_timeout: float = 60.0,
                 restart_backoff: tuple[float, float] = (0.5, 30.0),
                 max_start_failures: int = 5) -> None:
        if config.workers < 2:
            raise ConfigError("the supervisor runs --workers 2 or more")
        self.config = config
        self.metrics = metrics if metrics is not None else SupervisorMetrics()
        self._collector = WorkerMetricsCollector()
        self.metrics.registry.register(self._collector)
        self._worker_args = list(worker_args)
        self._python = python
        self._ready_timeout = ready_timeout
        self._backoff = restart_backoff
        self._max_start_failures = max_start_failures
        # Set when a worker could not be started again: the supervisor stopped.
        self.error = ""
        self._dir = ""
        self._workers: list[_Worker] = []
        self._admin_server: grpc.aio.Server | None = None
        self._admin_health = health.aio.HealthServicer()
        self._admin = FanOutAdminServicer(self._up_admins, config.placer,
                                          policy=admin_policy(config))
        self._metrics_server: MetricsServer | None = None
        self._stop_event = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self.front_tls: Any = None
        host, port = split_hostport(config.listen, "--listen")
        self.address = f"{host}:{port}"
        self.admin_address = ""
        self.metrics_address = ""

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        check_port_free(cfg.listen)
        # Fail here, once, rather than in every worker.
        make_placer(cfg.placer)
        self._load_tls()
        # mkdtemp: mode 0700, so only this user reaches the workers' sockets.
        self._dir = tempfile.mkdtemp(prefix="fnlb-workers-")
        self._workers = [_Worker(i, WorkerPaths.of(self._dir, i)) for i in range(cfg.workers)]
        if len(self._workers[-1].paths.metrics) > 100:  # sun_path is 108 bytes
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ConfigError(f"--workers: temporary directory path too long for unix "
                              f"sockets ({self._dir}); set TMPDIR to a shorter one")
        self.metrics.workers.set(cfg.workers)
        for w in self._workers:
            self.metrics.worker_up.labels(str(w.index)).set(0)
            self.metrics.worker_restarts.labels(str(w.index))
        try:
            if cfg.admin_listen:
                self._admin_server, self.admin_address = await serve_admin(
                    self._admin, self._admin_health, cfg.admin_listen, self.front_tls)
            if cfg.metrics_listen:
                host, port = split_hostport(cfg.metrics_listen, "--metrics-listen")
                self._metrics_server = MetricsServer(self.render_metrics, host, port)
                await start_metrics(self._metrics_server, f"--metrics-listen {cfg.metrics_listen}")
                self.metrics_address = self._metrics_server.address
            # Every spawn runs to its end (ready or failed) before we judge, so
            # none is left half-started.
            results = await asyncio.gather(*(self._spawn(w) for w in self._workers),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        except BaseException:
            await self._abort_start()
            raise
        for w in self._workers:
            w.monitor = asyncio.create_task(self._watch(w), name=f"fnlb-worker-{w.index}")
        log.info("listening", extra=kv(
            addr=self.address, metrics_addr=self.metrics_address,
            admin_addr=self.admin_address, placer=cfg.placer, tls=cfg.front_tls is not None,
            workers=cfg.workers,
            pids=",".join(str(w.proc.pid) for w in self._workers if w.proc is not None)))

    async def _abort_start(self) -> None:
        self._stop_event.set()
        for w in self._workers:
            if w.running:
                assert w.proc is not None
                w.proc.kill()
                await w.proc.wait()
            await self._down(w)
        await self._close_servers()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _load_tls(self) -> None:
        """Load the certificates now: bad material fails before any worker starts."""
        cfg = self.config
        if cfg.front_tls is None and cfg.runner_tls is None:
            return
        from fnlb.tls import ClientTLS, ReloadingServerCredentials, TLSFiles

        if cfg.front_tls is not None:
            self.front_tls = ReloadingServerCredentials(
                TLSFiles(cfg.front_tls.cert, cfg.front_tls.key, cfg.front_tls.ca),
                require_client_auth=cfg.front_tls.ca is not None)
        if cfg.runner_tls is not None:
            ClientTLS(TLSFiles(cfg.runner_tls.cert, cfg.runner_tls.key, cfg.runner_tls.ca))

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM every worker; wait ``grace`` (+ a margin for closing) then SIGKILL."""
        self._begin_stop(self.config.drain_grace if grace is None else grace)
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    def _begin_stop(self, grace: float) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        self._stop_event.set()
        log.info("draining workers", extra=kv(grace_s=grace, workers=len(self._workers)))
        if self._admin_server is not None:
            await self._admin_health.enter_graceful_shutdown()
            await self._admin_server.stop(min(grace, 1.0))
        for w in self._workers:
            if w.running:
                assert w.proc is not None
                w.proc.send_signal(signal.SIGTERM)
        monitors = [w.monitor for w in self._workers if w.monitor is not None]
        if monitors:
            _, pending = await asyncio.wait(monitors, timeout=grace + _STOP_MARGIN_S)
            if pending:
                for w in self._workers:
                    if w.running:
                        assert w.proc is not None
                        log.error("worker did not stop in time; killing it", extra=kv(
                            worker=w.index, pid=w.proc.pid))
                        w.proc.kill()
                await asyncio.wait(monitors)
        await self._close_servers()
        shutil.rmtree(self._dir, ignore_errors=True)
        log.info("stopped", extra=kv(exit_codes=",".join(
            str(w.returncode) for w in self._workers)))

    async def _close_servers(self) -> None:
        if self._admin_server is not None:
            await self._admin_server.stop(0)
        if self._metrics_server is not None:
            await self._metrics_server.stop()

    def kill(self) -> None:
        """The second signal: SIGKILL every worker now (no drain)."""
        for w in self._workers:
            if w.running:
                assert w.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def wait_closed(self) -> None:
        """Until the supervisor stopped: by ``stop()``, or on its own (``error`` says why)."""
        await self._stop_event.wait()
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    @property
    def clean_exit(self) -> bool:
        """Every worker exited 0 on the last stop (a drained worker does)."""
        return all(w.returncode == 0 for w in self._workers)

    def reload_tls(self) -> None:
        """SIGHUP: this process's admin certificate, and every ready worker's."""
        # Not to a worker still starting: it reads the files anyway, and has no
        # SIGHUP handler yet (the signal would kill it).
        ready = [w.proc for w in self._workers
                 if w.proc is not None and w.running and w.admin is not None]
        log.info("reloading certificates; passing SIGHUP to the workers",
                 extra=kv(workers=",".join(str(proc.pid) for proc in ready)))
        if self.front_tls is not None:
            self.front_tls.reload()
        for proc in ready:
            proc.send_signal(signal.SIGHUP)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.running and w.proc is not None]

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)

    # -- workers -------------------------------------------------------------------

    def _argv(self, w: _Worker, fd: int) -> list[str]:
        # The supervisor's own arguments, then overrides (argparse: the last wins).
        return [self._python, "-m", "fnlb", "serve", *self._worker_args,
                "--workers", "1", "--worker-index", str(w.index),
                "--worker-dir", self._dir, "--worker-fd", str(fd)]

    async def _spawn(self, w: _Worker) -> None:
        """Start worker ``w`` and wait until it says it is ready.

        On any failure (WorkerStartError when it exits or hangs before it is
        ready, or cancellation) no process is left running and ``w`` is down.
        """
        parent, child = socket.socketpair()
        try:
            # A session of its own: a terminal's Ctrl-C reaches the supervisor
            # only, which drains the workers (else each would see it too, and
            # the forwarded SIGTERM would count as their second signal).
            w.proc = await asyncio.create_subprocess_exec(
                *self._argv(w, child.fileno()), pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        proc = w.proc
        w.started_at = time.monotonic()
        w.returncode = None
        if self._stop_event.is_set():
            proc.send_signal(signal.SIGTERM)  # stop() came while it was being started
        try:
            reader, w.link = await asyncio.open_unix_connection(sock=parent)
            try:
                line = await asyncio.wait_for(reader.readline(), self._ready_timeout)
            except TimeoutError:
                line = None
            if line != READY:
                if line is None and proc.returncode is None:
                    log.error("worker not ready in time; killing it", extra=kv(
                        worker=w.index, timeout_s=self._ready_timeout))
                    proc.kill()
                w.returncode = await proc.wait()
                raise WorkerStartError(
                    f"worker {w.index} was not ready within {self._ready_timeout:g}s; "
                    "killed it" if line is None else
                    f"worker {w.index} exited with code {w.returncode} before it was ready "
                    "(its error is above)")
            w.channel = grpc.aio.insecure_channel(f"unix:{w.paths.admin}")
            w.admin = lb_pb2_grpc.AdminStub(w.channel)
        except BaseException:
            if proc.returncode is None:
                proc.kill()  # reaped by whoever waits on it next (_watch, _abort_start)
            if w.link is None:
                parent.close()
            await self._down(w)
            raise
        self.metrics.worker_up.labels(str(w.index)).set(1)
        log.info("worker ready", extra=kv(worker=w.index, pid=proc.pid))
        await self._admin.replay(w.index, w.admin)

    async def _down(self, w: _Worker) -> None:
        self.metrics.worker_up.labels(str(w.index)).set(0)
        w.admin = None
        if w.channel is not None:
            await w.channel.close()
            w.channel = None
        if w.link is not None:
            w.link.close()
            w.link = None

    async def _watch(self, w: _Worker) -> None:
        """Restart worker ``w`` whenever it exits, until the supervisor stops.

        A worker that fails to start again ``max_start_failures`` times in a row
        (say a certificate or ``--runners-file`` that went bad since the
        supervisor started) stops the supervisor with that error: retrying for
        ever would hide a broken configuration behind an LB one worker short.
        """
        backoff = self._backoff[0]
        while True:
            assert w.proc is not None
            w.returncode = await w.proc.wait()
            await self._down(w)
            if self._stop_event.is_set():
                return
            if time.monotonic() - w.started_at > _STABLE_AFTER_S:
                backoff = self._backoff[0]
            log.error("worker exited unexpectedly; restarting it", extra=kv(
                worker=w.index, pid=w.proc.pid, exit_code=w.returncode,
                restart_in_s=backoff))
            failures = 0
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), backoff)
                if self._stop_event.is_set():
                    return
                backoff = min(backoff * 2, self._backoff[1])
                self.metrics.worker_restarts.labels(str(w.index)).inc()
                try:
                    await self._spawn(w)
                    break
                except Exception as e:  # WorkerStartError, or e.g. OSError from exec
                    if self._stop_event.is_set():
                        return
                    failures += 1
                    if failures >= self._max_start_failures:
                        self._give_up(f"worker {w.index} failed to start {failures} times in "
                                      f"a row; last: {e}")
                        return
                    log.error("worker restart failed; trying again", extra=kv(
                        worker=w.index, attempt=failures, error=str(e),
                        restart_in_s=backoff))

    def _give_up(self, error: str) -> None:
        self.error = error
        log.error("giving up on a worker that cannot start; stopping every worker",
                  extra=kv(error=error))
        self._begin_stop(self.config.drain_grace)

    def _up_admins(self) -> list[tuple[int, Any]]:
        return [(w.index, w.admin) for w in self._workers if w.admin is not None]

    # -- metrics -------------------------------------------------------------------

    async def render_metrics(self) -> bytes:
        """This process's metrics and every worker's, labelled ``worker="i"``."""
        up = [w for w in self._workers if w.admin is not None]
        texts = await asyncio.gather(*(_scrape(w.paths.metrics) for w in up),
                                     return_exceptions=True)
        got: dict[int, str] = {}
        for w in self._workers:
            self.metrics.worker_up.labels(str(w.index)).set(0)
        for w, text in zip(up, texts, strict=True):
            if isinstance(text, BaseException):
                log.warning("worker metrics scrape failed", extra=kv(
                    worker=w.index, error=repr(text)))
                continue
            got[w.index] = text
            self.metrics.worker_up.labels(str(w.index)).set(1)
        # No await from here to the render: this scrape's texts are the ones rendered.
        self._collector.update(got)
        return generate_latest(self.metrics.registry)


async def _scrape(path: str) -> str:
    async with asyncio.timeout(_SCRAPE_TIMEOUT_S):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: fnlb-worker\r\n"
                         b"Connection: close\r\n\r\n")
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"worker metrics answered {head[:40]!r}")
    return body.decode()
