"""The LB's configuration: frozen, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fnlb.errors import ConfigError
from fnlb.placers.chbl import DEFAULT_C
from fnlb.placers.queue import QueueConfig
from fnlb.pools.health import HealthConfig
from fnlb.runnerpool import PlacerConfig

__all__ = ["LBConfig", "REGISTRATION", "REQUEST_OVERHEAD_BYTES", "TLSPaths", "split_hostport"]

# What --max-request-bytes allows above --max-body-bytes by default: config,
# headers and ids (at most 2 x 64 entries of 256 + 4,096 bytes: about 560 KiB).
REQUEST_OVERHEAD_BYTES = 1 << 20

# --discovery registration: no discovery source; runners add themselves (Admin).
REGISTRATION = "registration"


def split_hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{flag}: expected HOST:PORT (port 0-65535), got {text!r}")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class TLSPaths:
    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True, slots=True)
class LBConfig:
    listen: str = "127.0.0.1:9090"
    metrics_listen: str = "127.0.0.1:9091"
    runners: tuple[str, ...] = ()
    runners_file: Path | None = None
    runners_file_interval: float = 1.0
    discovery: str = ""
    discovery_interval: float = 5.0
    # The Admin service's own address, off the public port; "" disables it.
    admin_listen: str = "127.0.0.1:9092"
    health: HealthConfig = field(default_factory=HealthConfig)
    placer: str = "naive"
    placer_config: PlacerConfig = field(default_factory=PlacerConfig)
    # The load bound of the chbl and warm placers (--chbl-c); others ignore it.
    chbl_c: float = DEFAULT_C
    # The overload wait queue (--queue on); off is fn's NACK sweep.
    queue: bool = True
    queue_config: QueueConfig = field(default_factory=QueueConfig)
    max_body_bytes: int = 8 * 1024 * 1024
    # Body + config + headers + ids of one call (--max-request-bytes); 0: derived,
    # --max-body-bytes + REQUEST_OVERHEAD_BYTES (see ``request_limit``).
    max_request_bytes: int = 0
    # The front door's connection limits (gRPC server options; 0 = off).
    max_concurrent_streams: int = 10_000
    max_connection_idle: float = 300.0
    max_connection_age: float = 3600.0
    # An InvokeStream that sends no `request` message within this long is ended.
    stream_header_timeout: float = 10.0
    max_response_bytes: int = 64 * 1024 * 1024
    # More runners an idempotent call may run on when its runner is lost.
    idempotent_retries: int = 2
    # A try a runner has not answered within this long makes it suspect (0: never).
    accept_timeout: float = 1.0
    # --runner-protocol: "auto", "fnlb" or "fn" (addresses without fn:// / fnlb://).
    runner_protocol: str = "auto"
    drain_grace: float = 30.0
    connect_timeout: float = 1.0
    default_timeout_s: int = 30
    runner_tls: TLSPaths | None = None
    runner_server_name: str = ""
    front_tls: TLSPaths | None = None
    log_level: str = "info"
    # One logfmt line per call on logger fnlb.access (--access-log), at most
    # access_log_rate lines per second (0: no limit; README, Observability).
    access_log: bool = True
    access_log_rate: float = 1000.0
    # --otlp-endpoint: export OpenTelemetry spans there (fnlb.tracing); "" = off.
    otlp_endpoint: str = ""
    # --workers N > 1: this process supervises N LB processes sharing --listen.
    workers: int = 1
    # Set in a worker process only (by the supervisor, through hidden flags):
    # its index for logs, SO_REUSEPORT on the front door, and private unix
    # sockets for metrics and Admin in place of the public addresses.
    worker_index: int | None = None
    reuse_port: bool = False
    metrics_unix: str = ""
    admin_unix: str = ""
    # Who may call Admin (fnlb.authz): --admin-allow (None: the default, loopback
    # without a client CA, nobody with one) and --register-allow.
    admin_allow: tuple[str, ...] | None = None
    register_allow: tuple[str, ...] = ()

    @property
    def request_limit(self) -> int:
        """--max-request-bytes, or its default: --max-body-bytes + REQUEST_OVERHEAD_BYTES."""
        return self.max_request_bytes or self.max_body_bytes + REQUEST_OVERHEAD_BYTES

    def __post_init__(self) -> None:
        _, port = split_hostport(self.listen, "--listen")
        if self.otlp_endpoint and "://" not in self.otlp_endpoint:
            split_hostport(self.otlp_endpoint, "--otlp-endpoint")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and port == 0:
            raise ConfigError(
                f"--workers {self.workers}: --listen needs a fixed port, not 0 (the workers "
                f"share one port through SO_REUSEPORT), got {self.listen!r}")
        if self.workers > 1 and self.worker_index is not None:
            raise ConfigError("a worker process runs with --workers 1")
        if self.metrics_listen:
            split_hostport(self.metrics_listen, "--metrics-listen")
        if self.admin_listen:
            split_hostport(self.admin_listen, "--admin-listen")
        if not self.runners_file_interval > 0:
            raise ConfigError("--runners-file-interval must be > 0")
        if not self.discovery_interval > 0:
            raise ConfigError("--discovery-interval must be > 0")
        if self.discovery == REGISTRATION:
            if not (self.admin_listen or self.admin_unix):
                raise ConfigError("--discovery registration needs --admin-listen: runners "
                                  "register through the Admin service")
        elif self.discovery:
            from fnlb.pools.dns import parse_discovery

            parse_discovery(self.discovery)  # a bad URI fails at startup, naming the flag
        if not (math.isfinite(self.chbl_c) and self.chbl_c >= 1):
            # c < 1 would leave no runner below the bound once load is even.
            raise ConfigError(f"--chbl-c must be >= 1, got {self.chbl_c}")
        if self.max_body_bytes <= 0:
            raise ConfigError(f"--max-body-bytes must be > 0, got {self.max_body_bytes}")
        if self.idempotent_retries < 0:
            raise ConfigError(f"--idempotent-retries must be >= 0, got {self.idempotent_retries}")
        if self.max_request_bytes < 0:
            raise ConfigError(f"--max-request-bytes must be >= 0, got {self.max_request_bytes}")
        if self.max_request_bytes and self.max_request_bytes < self.max_body_bytes:
            raise ConfigError(f"--max-request-bytes ({self.max_request_bytes}) must be at least "
                              f"--max-body-bytes ({self.max_body_bytes}): it bounds the body "
                              "plus config, headers and ids")
        if self.max_concurrent_streams < 0:
            raise ConfigError("--max-concurrent-streams must be >= 0")
        if not (self.max_connection_idle >= 0 and self.max_connection_age >= 0):
            raise ConfigError("--max-connection-idle and --max-connection-age must be >= 0")
        if not self.stream_header_timeout > 0:
            raise ConfigError(f"--stream-header-timeout must be > 0, "
                              f"got {self.stream_header_timeout}")
        if not self.accept_timeout >= 0:
            raise ConfigError(f"--accept-timeout must be >= 0, got {self.accept_timeout}")
        if self.runner_protocol not in ("auto", "fnlb", "fn"):
            raise ConfigError(f"--runner-protocol must be auto, fnlb or fn, "
                              f"got {self.runner_protocol!r}")
        if self.max_response_bytes <= 0:
            raise ConfigError(f"--max-response-bytes must be > 0, got {self.max_response_bytes}")
        if self.drain_grace < 0:
            raise ConfigError("--drain-grace must be >= 0")
        if self.connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be > 0")
        from fnlb.authz import AdminPolicy

        # A bad pattern fails at startup, naming its flag.
        client_ca = self.front_tls is not None and self.front_tls.ca is not None
        AdminPolicy.from_flags(self.admin_allow, self.register_allow, client_ca=client_ca)
        if not (math.isfinite(self.access_log_rate) and self.access_log_rate >= 0):
            raise ConfigError(f"--access-log-rate must be >= 0, got {self.access_log_rate}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"--log-level must be debug, info, warning or error, "
                              f"got {self.log_level!r}")
