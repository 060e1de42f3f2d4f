"""``runner-stub`` / ``python -m runner_stub``: flags, environment, signals.

Every flag can also be set with an environment variable RUNNER_STUB_<FLAG>
(``--memory-mb`` -> ``RUNNER_STUB_MEMORY_MB``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fnlb.errors import ConfigError
from fnlb.logs import kv, setup_logging
from fnlb.timefmt import format_duration, parse_duration
from runner_stub import tracing
from runner_stub.config import LOG_LEVELS, StubConfig, flag_name, split_listen
from runner_stub.errors import StartupError
from runner_stub.server import StubServer

__all__ = ["main", "build_parser", "parse_config", "ENV_PREFIX"]

log = logging.getLogger("runner_stub")

ENV_PREFIX = "RUNNER_STUB_"
_DEFAULTS = StubConfig()


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _addr(text: str) -> str:
    try:
        split_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


def _text(text: str) -> str:
    return text


def _switch(text: str) -> bool:
    """A switch's environment value: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/true/yes/on or 0/false/no/off, got {text!r}")


@dataclass(frozen=True)
class _Flag:
    field: str  # the StubConfig field; the flag is its kebab-case name
    metavar: str
    parse: Callable[[str], Any]
    help: str
    default: str = ""  # shown in --help; "" = the StubConfig default
    switch: bool = False  # a flag without a value (its env variable takes 1/0)

    @property
    def flag(self) -> str:
        return flag_name(self.field)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


_FLAGS: tuple[_Flag, ...] = (
    _Flag("listen", "HOST:PORT", _addr, "address to serve on; port 0 picks a free port "
          "(the bound one is logged as msg=listening addr=...). HOST:FIRST-LAST (a port "
          "range) serves one independent fake runner per port from this process, for "
          "pools of thousands (each its own slots, warm cache and counters; its id is "
          "its address)"),
    _Flag("slots", "N", _int, "calls run at the same time"),
    _Flag("memory_mb", "N", _int, "memory (MiB) shared by running calls; a call takes its "
          "JSON 'memory' (128 if absent); a call asking more than this is refused as 'does "
          "not fit' (507: the LB tries another runner)"),
    _Flag("nack_after_ms", "N", _int, "how long a call waits for a slot and memory before "
          "it is NACKed as busy (503)"),
    _Flag("cold_start_ms", "N", _int, "extra start-up time of a function that is not warm "
          "(reported as ctrCreateDuration)"),
    _Flag("image_pull_ms", "N", _int, "fake image pull: the first call for an image on this "
          "runner (that is not warm) waits N ms first, calls during the pull wait for it too; "
          "later ones find the image cached (reported as imagePullWaitDuration)"),
    _Flag("warm_cache", "N", _int, "functions kept warm (LRU, keyed by slot_hash_id, else "
          "fn_id); 0 = every call is a cold start"),
    _Flag("max_body_bytes", "N", _int, "largest request body; bigger ones fail with 413"),
    _Flag("log_level", "LEVEL", _level, "one of " + ", ".join(LOG_LEVELS)),
    _Flag("runner_id", "ID", _text, "identity reported by Status", "the bound HOST:PORT"),
    _Flag("drain_grace", "DUR", _duration, "on SIGTERM/SIGINT, how long to let in-flight "
          "calls finish (10ms, 1.5s, 1m, or seconds); a second signal exits at once "
          "with status 128+signal",
          format_duration(_DEFAULTS.drain_grace)),
    _Flag("tls_cert", "FILE", _text, "server certificate (PEM); with --tls-key and "
          "--tls-ca the stub serves mutual TLS only", "none"),
    _Flag("tls_key", "FILE", _text, "private key of --tls-cert (PEM)", "none"),
    _Flag("tls_ca", "FILE", _text, "CA (PEM) that client certificates must chain to", "none"),
    _Flag("close_allow", "WHO,...", _text, "who may call Close (drain this runner; the LB "
          "does on Admin/DrainRunner): identities of the caller's client certificate (SAN "
          "DNS or URI, or CN, e.g. the LB's certificate name; 'lb-*' patterns), ip:CIDR or "
          "loopback. With --tls-* nobody else may; without TLS loopback callers may too. "
          "Others get PERMISSION_DENIED", "none"),
    _Flag("allow_insecure_close", "", _switch, "without TLS, let any caller that reaches "
          "the port drain this runner (Close); otherwise only loopback and --close-allow",
          "off", switch=True),
    _Flag("register_with", "HOST:PORT", _text, "self-register with this LB's admin address "
          "(Admin/AddRunner heartbeat; removed on exit)", "none"),
    _Flag("register_ttl", "DUR", _duration, "registration TTL: the LB forgets this runner "
          "when no heartbeat arrived for this long (heartbeats every TTL/3)",
          format_duration(_DEFAULTS.register_ttl)),
    _Flag("fail_rate", "F", _float, "fault: fraction 0..1 of accepted calls that fail with "
          "500 'injected failure'"),
    _Flag("seed", "N", _int, "random seed for --fail-rate", "random"),
    _Flag("crash_after", "N", _int, "fault: exit abruptly (code 3) once the Nth accepted "
          "call has sent result_start; 0 = never"),
    _Flag("hang_ms", "N", _int, "fault: after each try, wait this long before answering "
          "anything (a hung runner)"),
    _Flag("nack_delay_ms", "N", _int, "fault: delay every NACK by this long"),
    _Flag("ack", "BOOL", _switch, "list the 'ack' feature: acknowledge a try that asks for it "
          "once its slot is taken, and start it only after the LB's go, so the LB can "
          "safely send a call it saw no ack for elsewhere; false = fn's behaviour",
          "true"),
    _Flag("otlp_endpoint", "HOST:PORT", _text, "export an OpenTelemetry span per call "
          "(runner.exec, continuing the LB's traceparent) over OTLP/gRPC to this collector "
          "(plaintext; an https:// URL for TLS). Needs the optional extra: "
          "pip install 'fnlb[otel]'", "none"),
    _Flag("watch", "BOOL", _switch, "list the 'watch' feature and serve Runner/Watch: push "
          "the status to the LB when it changes instead of being polled; false = a runner "
          "without it (the LB polls Status)", "true"),
    _Flag("status_min_interval", "DUR", _duration, "Runner/Watch: at most one status message "
          "per this interval (changes in between are coalesced)",
          format_duration(_DEFAULTS.status_min_interval)),
    _Flag("watch_heartbeat", "DUR", _duration, "Runner/Watch: send the status at least this "
          "often, changed or not (the LB takes longer silence as a dead runner)",
          format_duration(_DEFAULTS.watch_heartbeat)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner-stub",
        description="A fake fnlb runner: serves fnlb.v1.Runner (TryExec, Status, Close) with "
                    "fake functions steered by the call's config (sleep_ms, status, "
                    "response_size, fail, crash), plus gRPC health and reflection.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> in the environment "
               f"(e.g. {ENV_PREFIX}MEMORY_MB); the command line wins. Durations are "
               "written as Go writes them (10ms, 1.5s, 6m) or as plain seconds.",
    )
    for f in _FLAGS:
        default = f.default or str(getattr(_DEFAULTS, f.field))
        help_text = f"{f.help} (default: {default}; env {f.env})"
        if f.switch:
            parser.add_argument(f.flag, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            parser.add_argument(f.flag, metavar=f.metavar, type=f.parse, default=None,
                                help=help_text)
    return parser


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> StubConfig:
    """Flags, then RUNNER_STUB_* variables, then defaults -> a validated StubConfig.

    Bad values exit with status 2 and a message naming the flag.
    """
    parser = parser or build_parser()
    environ = os.environ if environ is None else environ
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f in _FLAGS:
        value = args[f.field]
        if value is None and environ.get(f.env, "") != "":
            raw = environ[f.env]
            try:
                value = f.parse(raw)
            except (argparse.ArgumentTypeError, ValueError) as e:
                parser.error(f"argument {f.flag} (from {f.env}={raw!r}): {e}")
        if value is not None:
            values[f.field] = value
    try:
        return StubConfig(**values)
    except ConfigError as e:
        parser.error(str(e))


def _force_exit(sig: signal.Signals) -> NoReturn:
    log.warning("second signal, exiting now", extra=kv(signal=sig.name))
    os._exit(128 + sig.value)


async def _serve(cfg: StubConfig) -> int:
    server: StubServer | RunnerHost
    if cfg.port_range:
        from runner_stub.host import RunnerHost

        server = RunnerHost(cfg)
    else:
        server = StubServer(cfg)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _force_exit(sig)
        log.info("signal received, draining", extra=kv(
            signal=sig.name, active=server.service.active,
            grace=format_duration(cfg.drain_grace)))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    registration = None
    if cfg.register_with:
        from fnlb.runnerside import register_loop

        creds = None
        if cfg.tls:
            # With --tls-*, register over mTLS with the same certificate: an LB
            # whose admin API demands client certificates accepts it.
            from fnlb.tls import ClientTLS, TLSFiles

            creds = ClientTLS(TLSFiles(Path(cfg.tls_cert), Path(cfg.tls_key),
                                       Path(cfg.tls_ca))).credentials()
        registration = asyncio.create_task(register_loop(
            cfg.register_with, server.addr, cfg.register_ttl, stop, credentials=creds))
    stop_wait = asyncio.ensure_future(stop.wait())
    closed = asyncio.ensure_future(server.wait_closed())
    try:
        await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            log.error("server terminated unexpectedly")
            return 1
        await server.shutdown(cfg.drain_grace)
        await closed
        if registration is not None:
            await registration
        log.info("exiting")
        return 0
    finally:
        for task in (stop_wait, closed):
            task.cancel()
        await asyncio.gather(stop_wait, closed, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    cfg = parse_config(argv, parser=parser)
    setup_logging(cfg.log_level)
    try:
        if cfg.otlp_endpoint:
            tracing.setup(cfg.otlp_endpoint)
        return asyncio.run(_serve(cfg))
    except ConfigError as e:  # e.g. TLS material unusable (TLSConfigError), found at start
        parser.error(str(e))
    except StartupError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # the spans still batched go out before the process ends
