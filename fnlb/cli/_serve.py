"""``fnlb serve``: its flags, the LBConfig they make, and running it (one LB, or
the supervisor of ``--workers N``) with two-stage signal handling.

Every flag of ``serve`` can also be set by an environment variable
``FNLB_<FLAG>`` (``--placer-timeout`` -> ``FNLB_PLACER_TIMEOUT``); fn's names are
accepted where fn has one (``FN_RUNNER_ADDRESSES``, ``FN_PLACER``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnlb.cli._args import (
    HelpFormatter,
    app_weights,
    duration,
    non_negative_int,
    number,
    on_off,
    percent,
    positive_int,
    utf8_text,
)
from fnlb.errors import ConfigError
from fnlb.logs import setup_logging
from fnlb.timefmt import format_duration

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from fnlb.config import LBConfig, TLSPaths

__all__ = ["add_serve_parser", "config_from_args"]

_FN_ALIASES = {"runners": ("FN_RUNNER_ADDRESSES",), "placer": ("FN_PLACER",),
               "max_response_bytes": ("FN_MAX_RESPONSE_SIZE",)}


def _env_default(dest: str, default: Any) -> Any:
    for name in (f"FNLB_{dest.upper()}", *_FN_ALIASES.get(dest, ())):
        if name in os.environ:
            return os.environ[name]
    return default


def _add(p: argparse.ArgumentParser, flag: str, default: Any = None, **kw: Any) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    env = f"FNLB_{dest.upper()}"
    aliases = _FN_ALIASES.get(dest, ())
    help_text = kw.pop("help", "")
    kw["help"] = f"{help_text} [env {env}{''.join(', ' + a for a in aliases)}]"
    if kw.get("action") == "store_true":
        raw = _env_default(dest, None)
        default = raw.lower() in ("1", "true", "yes", "on") if isinstance(raw, str) else default
    else:
        default = _env_default(dest, default)
        kw.setdefault("type", utf8_text)
    p.add_argument(flag, default=default, **kw)


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", formatter_class=HelpFormatter,
        help="run the load balancer",
        description=(
            "Run the LB: clients call fnlb.v1.LoadBalancer/Invoke on --listen; calls are placed\n"
            "on the runners (fnlb.v1.Runner/TryExec) by the --placer; Prometheus metrics are on\n"
            "http://--metrics-listen/metrics. Durations take Go syntax (10ms, 1.5s, 6m) or\n"
            "plain seconds. SIGTERM/SIGINT drains (in-flight calls finish within\n"
            "--drain-grace); a second signal exits at once.\n\n"
            "--workers N runs N LB processes sharing the --listen port (SO_REUSEPORT) to use\n"
            "N cores; this process then supervises them and serves --metrics-listen and\n"
            "--admin-listen for all of them (see README, Workers)."))
    _add(p, "--listen", "127.0.0.1:9090", metavar="HOST:PORT",
         help="front-door gRPC address (use 0.0.0.0:PORT to accept remote clients)")
    _add(p, "--metrics-listen", "127.0.0.1:9091", metavar="HOST:PORT",
         help="Prometheus /metrics HTTP address; empty to disable")
    _add(p, "--runners", "", metavar="A,B,...",
         help="static runner pool: comma-separated HOST:PORT runner addresses "
              "(fn://HOST:PORT: an fn runner)")
    _add(p, "--runner-protocol", "auto", choices=("auto", "fnlb", "fn"),
         help="what runners speak: 'fnlb' (fnlb.v1.Runner), 'fn' (fn's RunnerProtocol: "
              "Engage/Status) or 'auto' (ask fnlb.v1.Runner/Status, then fn's; learned per "
              "runner); an address written fn://HOST:PORT or fnlb://HOST:PORT overrides it")
    _add(p, "--runners-file", None, metavar="PATH",
         help="file pool: runner addresses, one per line (# comments), re-read when it changes")
    _add(p, "--runners-file-interval", "1s", type=duration, metavar="DUR",
         help="how often to check --runners-file for changes")
    _add(p, "--discovery", "", metavar="URI",
         help="DNS pool, e.g. dns:///runners.ns.svc:9190 or dns+srv:///_grpc._tcp.runners.ns.svc; "
              "'registration': only runners that register through --admin-listen")
    _add(p, "--discovery-interval", "5s", type=duration, metavar="DUR",
         help="how often to re-resolve --discovery (a failed lookup keeps the last runners)")
    _add(p, "--admin-listen", "127.0.0.1:9092", metavar="HOST:PORT",
         help="fnlb.v1.Admin gRPC address (list/add/remove/drain runners, self-registration); "
              "never on --listen; uses front-door mTLS when --front-tls-ca is set; who may "
              "call it: --admin-allow; empty to disable")
    _add(p, "--admin-allow", None, metavar="WHO,...",
         help="who may call Admin (list/add/remove/drain runners): identities of the caller's "
              "client certificate (SAN DNS or URI, or CN; 'ops-*' and '*.ops.example' "
              "patterns; '*' = any certificate from --front-tls-ca), ip:CIDR, loopback, or "
              "none. Default: loopback without --front-tls-ca, nobody with it. Others get "
              "PERMISSION_DENIED (README, Security model)")
    _add(p, "--register-allow", "", metavar="WHO,...",
         help="who may add/heartbeat and remove runners (never drain) without --admin-allow: "
              "'self' = a client certificate may register only its own address (the host is "
              "one of its SAN DNS names or IPs, with a TTL), 'self:PATTERN' = the same for "
              "matching identities only (e.g. self:runner-*), an identity pattern = may "
              "register any address. Default: none")
    _add(p, "--health-interval", "2s", type=duration, metavar="DUR",
         help="how often to poll every runner's Status")
    _add(p, "--health-timeout", "1s", type=duration, metavar="DUR",
         help="a Status poll slower than this is a failure")
    _add(p, "--health-backoff-max", "30s", type=duration, metavar="DUR",
         help="longest gap between Status polls of a runner that does not answer (the gap "
              "doubles per missed poll after --eject-after); at most --health-interval "
              "turns the back-off off")
    _add(p, "--health-backoff-after", "30s", type=duration, metavar="DUR",
         help="a runner that answered before is still polled every --health-interval for "
              "this long after it went silent (a restart or short partition is found "
              "again within an interval); then its polls back off")
    _add(p, "--health-poll-rate", "20", type=number, metavar="N",
         help="Status polls per second for the whole pool: up to --health-interval x N "
              "runners are polled every --health-interval; a larger pool every "
              "runners/N seconds per runner, spread evenly, skipping runners whose calls "
              "ran within that time (their outcomes are the health signal). Runners are "
              "asked at once when they join, whatever the budget")
    _add(p, "--runner-idle-close", "5m", type=duration, metavar="DUR",
         help="close the channel to a runner that ran no call for this long (an open "
              "channel costs ~37 KiB, and a ping a second to runners that list "
              "keepalive); the next call re-dials, Status polls use a one-off "
              "channel. 0 keeps every channel open")
    _add(p, "--eject-after", "3", type=positive_int, metavar="N",
         help="eject a runner after N failures in a row (Status polls, connection failures, "
              "non-busy runner errors; a busy NACK is never a failure)")
    _add(p, "--max-ejection-percent", "50", type=percent, metavar="P",
         help="never eject more than P%% of the runners at once")
    _add(p, "--slow-start", "10s", type=duration, metavar="DUR",
         help="a readmitted or newly joined runner ramps up to its full share over this "
              "long; 0 disables")
    _add(p, "--placer", "naive", metavar="NAME", help="placement strategy (see README)")
    _add(p, "--chbl-c", "2", type=number, metavar="C",
         help="load bound of --placer chbl and warm: a runner is full at c times the mean "
              "load, ceil(c*(total+1)/n); >= 1 (1.25 is the paper's value)")
    _add(p, "--placer-timeout", "360s", type=duration, metavar="DUR",
         help="give up placing a sync call after this long (server too busy)")
    _add(p, "--detached-placer-timeout", "30s", type=duration, metavar="DUR",
         help="the same for detached calls")
    _add(p, "--retry-all-delay", "10ms", type=duration, metavar="DUR",
         help="pause after every runner refused before trying them all again (runners "
              "that report no slot counts, or every runner with --queue off)")
    _add(p, "--queue", "on", type=on_off, metavar="on|off",
         help="overload wait queue: a call that finds every runner believed full waits "
              "for a free slot, fairly across app_id, instead of re-trying every runner "
              "every --retry-all-delay; off = fn's NACK sweep (see README, Overload)")
    _add(p, "--max-queue", "10000", type=positive_int, metavar="N",
         help="calls that may wait in the queue at once; the next one gets "
              "RESOURCE_EXHAUSTED at once, with a grpc-retry-pushback-ms trailer")
    _add(p, "--max-queue-per-app", "5000", type=positive_int, metavar="N",
         help="calls of one app_id that may wait at once (same answer beyond it)")
    _add(p, "--app-weights", "", type=app_weights, metavar="APP=W,...",
         help="share of the queue's turns per app_id (default 1 each): app=2 gets twice "
              "the turns of an app with weight 1 while both wait")
    _add(p, "--app-max-inflight", "0", type=non_negative_int, metavar="N",
         help="most calls of one app_id that the queue lets run at once (0: no limit); "
              "calls placed without waiting do not count")
    _add(p, "--idempotent-retries", "2", type=non_negative_int, metavar="N",
         help="a call the client marked idempotent (InvokeRequest.idempotent) whose "
              "runner was lost before any of its response arrived runs again on another "
              "runner, at most N more times, within a per-LB retry budget; others never do")
    _add(p, "--accept-timeout", "1s", type=duration, metavar="DUR",
         help="a runner that has not answered a try (NACK, acknowledgement or result) "
              "within this long gets no new calls until a status poll answers; with "
              "runners that acknowledge calls ('ack'), that call goes to another runner. "
              "0 disables")
    _add(p, "--connect-timeout", "1s", type=duration, metavar="DUR",
         help="how long to wait for a runner connection before trying the next runner")
    _add(p, "--max-body-bytes", str(8 * 1024 * 1024), type=positive_int, metavar="N",
         help="largest request body accepted (buffered at the LB for retries)")
    _add(p, "--max-request-bytes", "0", type=non_negative_int, metavar="N",
         help="largest request: body + config + headers + ids together (0: --max-body-bytes "
              "+ 1 MiB); a bigger one gets INVALID_ARGUMENT naming the limit. config and "
              "headers hold at most 64 entries each, keys of 256 bytes, values of 4 KiB "
              "(README, Security model)")
    _add(p, "--max-concurrent-streams", "10000", type=non_negative_int, metavar="N",
         help="calls one client connection may have open at once (HTTP/2 streams); beyond "
              "it grpc clients may see UNAVAILABLE 'RST_STREAM ... error code 7' (refused, "
              "never run, safe to retry) rather than a queue; 0: no limit")
    _add(p, "--max-connection-idle", "5m", type=duration, metavar="DUR",
         help="close a client connection with no call open for this long (GOAWAY; "
              "clients reconnect when they call again); 0: never")
    _add(p, "--max-connection-age", "1h", type=duration, metavar="DUR",
         help="ask a client connection to reconnect after this long (GOAWAY, +-10%% "
              "jitter); its open calls still get 70 minutes to finish; 0: never")
    _add(p, "--stream-header-timeout", "10s", type=duration, metavar="DUR",
         help="an InvokeStream that sends no `request` message within this long is "
              "ended with DEADLINE_EXCEEDED")
    _add(p, "--max-response-bytes", str(64 * 1024 * 1024), type=positive_int, metavar="N",
         help="largest function response: runners are told it with every call and fail a "
              "bigger one before sending anything (RESOURCE_EXHAUSTED); InvokeStream streams "
              "responses up to it")
    _add(p, "--drain-grace", "30s", type=duration, metavar="DUR",
         help="on SIGTERM, how long in-flight calls may take to finish")
    _add(p, "--default-timeout", "30", type=positive_int, metavar="SECONDS",
         help="function timeout for calls that set none")
    _add(p, "--tls-cert", None, metavar="FILE", help="LB client certificate for mTLS to runners")
    _add(p, "--tls-key", None, metavar="FILE", help="key of --tls-cert")
    _add(p, "--tls-ca", None, metavar="FILE", help="CA that signed the runners' certificates")
    _add(p, "--runner-server-name", "", metavar="NAME",
         help="expected name (SAN) in every runner certificate, instead of its address")
    _add(p, "--front-tls-cert", None, metavar="FILE", help="front-door server certificate")
    _add(p, "--front-tls-key", None, metavar="FILE", help="key of --front-tls-cert")
    _add(p, "--front-tls-ca", None, metavar="FILE",
         help="when set, clients must present a certificate signed by this CA")
    _add(p, "--log-level", "info", choices=("debug", "info", "warning", "error"),
         help="log verbosity (debug logs one line per call)")
    _add(p, "--access-log", "on", type=on_off, metavar="on|off",
         help="one logfmt line per call at info on logger fnlb.access: call_id, fn_id, "
              "app_id, type, status, grpc_code, runner, attempts, queue_ms, total_ms, "
              "exec_ms, bytes_in, bytes_out (README, Observability)")
    _add(p, "--access-log-rate", "1000", type=number, metavar="N",
         help="at most N access lines per second (a burst of N); the others are counted in "
              "fnlb_access_log_suppressed_total and summed up every 10 s in one line "
              "'access log: N lines suppressed'; 0: no limit")
    _add(p, "--otlp-endpoint", "", metavar="HOST:PORT",
         help="export OpenTelemetry spans of every call (fnlb.invoke, fnlb.queue, "
              "fnlb.attempt) over OTLP/gRPC to this collector (plaintext; an https:// URL "
              "for TLS), continuing the client's W3C traceparent and passing it on to the "
              "runners; empty: off. Needs the optional extra: pip install 'fnlb[otel]' "
              "(README, Tracing)")
    _add(p, "--event-loop", "auto", choices=("auto", "uvloop", "asyncio"),
         help="event loop: uvloop costs less CPU per call; auto = uvloop when installed")
    _add(p, "--workers", "1", type=positive_int, metavar="N",
         help="LB processes sharing --listen through SO_REUSEPORT, to use N cores (the kernel "
              "spreads client connections; one connection stays on one worker). With N > 1 "
              "this process supervises them: it needs a fixed --listen port, serves "
              "--metrics-listen (every worker's metrics, label worker) and --admin-listen "
              "(changes reach every worker), and restarts a worker that dies; it exits with "
              "an error when a worker fails to start 5 times in a row. SIGTERM drains every "
              "worker. Each worker has its own placer state: in-flight counts and load are "
              "per worker")
    # Set by the supervisor on the workers it starts (fnlb.workers); not for users.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)


def _tls_paths(args: argparse.Namespace, prefix: str, flag: str) -> TLSPaths | None:
    from fnlb.config import TLSPaths

    cert, key, ca = (getattr(args, f"{prefix}tls_{x}") for x in ("cert", "key", "ca"))
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise ConfigError(f"--{flag}tls-cert and --{flag}tls-key must be given together")
    if prefix == "" and not ca:
        raise ConfigError("--tls-ca is required with --tls-cert/--tls-key (mTLS to runners)")
    return TLSPaths(Path(cert), Path(key), Path(ca) if ca else None)


def config_from_args(args: argparse.Namespace) -> LBConfig:
    from fnlb.authz import split_list
    from fnlb.config import LBConfig
    from fnlb.placers.queue import QueueConfig
    from fnlb.pools import parse_address_list
    from fnlb.pools.health import HealthConfig
    from fnlb.runnerpool import PlacerConfig

    runners = tuple(parse_address_list(args.runners)) if args.runners else ()
    cfg = LBConfig(
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        admin_listen=args.admin_listen,
        runners=runners,
        runners_file=Path(args.runners_file) if args.runners_file else None,
        runners_file_interval=args.runners_file_interval,
        discovery=args.discovery,
        discovery_interval=args.discovery_interval,
        health=HealthConfig(interval=args.health_interval, timeout=args.health_timeout,
                            eject_after=args.eject_after,
                            max_ejection_percent=args.max_ejection_percent,
                            slow_start=args.slow_start,
                            poll_backoff_max=args.health_backoff_max,
                            poll_backoff_after=args.health_backoff_after,
                            poll_rate=args.health_poll_rate,
                            idle_close=args.runner_idle_close),
        placer=args.placer,
        placer_config=PlacerConfig(args.retry_all_delay, args.placer_timeout,
                                   args.detached_placer_timeout),
        chbl_c=args.chbl_c,
        queue=args.queue,
        queue_config=QueueConfig(max_queue=args.max_queue,
                                 max_queue_per_app=args.max_queue_per_app,
                                 weights=args.app_weights,
                                 inflight_limit=args.app_max_inflight or None),
        max_body_bytes=args.max_body_bytes,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        max_connection_idle=args.max_connection_idle,
        max_connection_age=args.max_connection_age,
        stream_header_timeout=args.stream_header_timeout,
        max_response_bytes=args.max_response_bytes,
        accept_timeout=args.accept_timeout,
        runner_protocol=args.runner_protocol,
        idempotent_retries=args.idempotent_retries,
        drain_grace=args.drain_grace,
        connect_timeout=args.connect_timeout,
        default_timeout_s=args.default_timeout,
        runner_tls=_tls_paths(args, "", ""),
        runner_server_name=args.runner_server_name,
        front_tls=_tls_paths(args, "front_", "front-"),
        log_level=args.log_level,
        access_log=args.access_log,
        access_log_rate=args.access_log_rate,
        otlp_endpoint=args.otlp_endpoint,
        workers=args.workers,
        admin_allow=None if args.admin_allow is None else split_list(args.admin_allow),
        register_allow=split_list(args.register_allow),
    )
    if args.worker_index is None:
        return cfg
    from fnlb.workers import WorkerPaths

    if args.worker_dir is None or args.worker_fd is None or args.workers != 1:
        raise ConfigError("--worker-index is set by `fnlb serve --workers N` on the workers "
                          "it starts, with --worker-dir and --worker-fd")
    paths = WorkerPaths.of(args.worker_dir, args.worker_index)
    # A worker: the supervisor serves the public metrics and admin addresses.
    return replace(cfg, worker_index=args.worker_index, reuse_port=True, metrics_listen="",
                   admin_listen="", metrics_unix=paths.metrics, admin_unix=paths.admin)


def _two_stage_signals(grace: float, stop: asyncio.Event,
                       force: Callable[[], None] | None = None) -> None:
    """The first SIGTERM/SIGINT sets ``stop`` (drain); a second calls ``force`` and exits 1."""
    import logging

    log = logging.getLogger("fnlb.cli")
    seen = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            log.info("signal received, draining: send it again to exit at once",
                     extra={"kv": {"signal": sig.name, "grace": format_duration(grace)}})
            stop.set()
        else:
            log.warning("second signal, exiting now", extra={"kv": {"signal": sig.name}})
            if force is not None:
                force()
            os._exit(1)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def _serve(cfg: LBConfig, worker_fd: int | None = None) -> int:
    import logging

    from fnlb.server import LBServer

    log = logging.getLogger("fnlb.cli")
    log.info("event loop", extra={"kv": {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}})
    server = LBServer(cfg)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _two_stage_signals(cfg.drain_grace, stop)
    # SIGHUP re-reads certificates (they are also picked up when the files change).
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    orphaned = False
    if worker_fd is not None:
        from fnlb.workers import SupervisorLink

        link = SupervisorLink(worker_fd)

        def supervisor_gone() -> None:
            nonlocal orphaned
            orphaned = True
            log.warning("supervisor gone, draining")
            stop.set()

        link.ready()
        link.watch(supervisor_gone)
    await stop.wait()
    await server.stop(cfg.drain_grace)
    await server.wait_closed()
    if orphaned:
        from fnlb.workers import remove_private_endpoints

        remove_private_endpoints(cfg)  # nobody else is left to
    return 0


async def _supervise(cfg: LBConfig, worker_args: Sequence[str]) -> int:
    import logging

    from fnlb.workers import Supervisor, WorkerStartError

    supervisor = Supervisor(cfg, worker_args)
    stop = asyncio.Event()
    # Before the workers start: a signal while they start stops them (else
    # this process would die of it, SIGHUP included, and leave its temporary
    # directory behind).
    _two_stage_signals(cfg.drain_grace, stop, supervisor.kill)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, supervisor.reload_tls)
    signalled = asyncio.ensure_future(stop.wait())
    try:
        starting = asyncio.ensure_future(supervisor.start())
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()  # start() kills what it started and removes its directory
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            logging.getLogger("fnlb.cli").warning("stopped before every worker was ready")
            return 1
        starting.result()  # a worker that could not start: WorkerStartError
        # Until a signal, or the supervisor stopping on its own (a worker that
        # keeps failing to start).
        closed = asyncio.ensure_future(supervisor.wait_closed())
        await asyncio.wait((signalled, closed), return_when=asyncio.FIRST_COMPLETED)
        await supervisor.stop(cfg.drain_grace)
        await closed
    finally:
        signalled.cancel()
    if supervisor.error:
        raise WorkerStartError(supervisor.error)
    return 0 if supervisor.clean_exit else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    if cfg.otlp_endpoint:
        from fnlb import tracing

        tracing.load()  # without the extra: one clear error now, not one per worker
    if not cfg.runners and not cfg.runners_file and not cfg.discovery:
        raise ConfigError("no runners: give --runners A,B (or FN_RUNNER_ADDRESSES), "
                          "--runners-file PATH, --discovery dns:///NAME:PORT, or "
                          "--discovery registration for runners that register themselves")
    if cfg.worker_index is not None:
        from fnlb.workers import tag_worker_logs

        tag_worker_logs(cfg.worker_index)
        return _run_traced(cfg, _serve(cfg, args.worker_fd), args.event_loop)
    if cfg.workers > 1:
        # The workers are started with the same arguments (argv after "serve").
        # The supervisor is off the data path: the stock loop is enough.
        argv: list[str] = args.argv
        return _run(_supervise(cfg, argv[argv.index("serve") + 1:]), "asyncio")
    return _run_traced(cfg, _serve(cfg), args.event_loop)


def _run_traced(cfg: LBConfig, coro: Coroutine[None, None, int], event_loop: str) -> int:
    """``_run``, exporting spans to --otlp-endpoint meanwhile (each worker its own)."""
    if not cfg.otlp_endpoint:
        return _run(coro, event_loop)
    from fnlb import tracing

    tracing.setup(cfg.otlp_endpoint, "fnlb")
    try:
        return _run(coro, event_loop)
    finally:
        tracing.shutdown()  # the spans still batched go out before the process ends


def _run(coro: Coroutine[None, None, int], event_loop: str) -> int:
    """asyncio.run on the chosen loop (uvloop cuts the LB's CPU per call)."""
    factory = None
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise ConfigError("--event-loop uvloop: uvloop is not installed") from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return int(runner.run(coro))
