"""The runner stub's settings: one frozen dataclass, validated when built.

Field names are the command-line flags in snake case, so every validation
error can name the flag a user has to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnlb.errors import ConfigError

__all__ = ["StubConfig", "TlsFiles", "split_host_port", "split_listen", "flag_name",
           "LOG_LEVELS", "MAX_RANGE"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def flag_name(field_name: str) -> str:
    """``max_body_bytes`` -> ``--max-body-bytes``."""
    return "--" + field_name.replace("_", "-")


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); port 0 means "pick a free one".

    >>> split_host_port("[::1]:9190")
    ('::1', 9190)
    """
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 host in brackets, e.g. [::1]:9190, got {addr!r}")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return host, port


# Most runners one --listen range may serve (one process, one listening socket each).
MAX_RANGE = 10_000


def split_listen(addr: str) -> tuple[str, int, int]:
    """``HOST:PORT`` or ``HOST:FIRST-LAST`` (a port range: one fake runner per port).

    >>> split_listen("127.0.0.1:20000-20999")
    ('127.0.0.1', 20000, 20999)
    >>> split_listen("[::1]:9190")
    ('::1', 9190, 9190)
    """
    head, sep, ports = addr.rpartition(":")
    first_text, dash, last_text = ports.partition("-")
    if not sep or not dash:
        host, port = split_host_port(addr)
        return host, port, port
    host, first = split_host_port(f"{head}:{first_text}")
    _, last = split_host_port(f"{head}:{last_text}")
    if first == 0 or last < first:
        raise ValueError(f"a port range is FIRST-LAST with 0 < FIRST <= LAST, got {ports!r}")
    if last - first + 1 > MAX_RANGE:
        raise ValueError(f"a port range holds at most {MAX_RANGE} ports, got {last - first + 1}")
    return host, first, last


_INT_MINIMUMS = {
    "slots": 1, "memory_mb": 1, "nack_after_ms": 0, "cold_start_ms": 0, "image_pull_ms": 0,
    "warm_cache": 0,
    "max_body_bytes": 0, "crash_after": 0, "hang_ms": 0, "nack_delay_ms": 0,
}


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes for mTLS, read once at startup."""

    cert: bytes
    key: bytes
    ca: bytes


@dataclass(frozen=True)
class StubConfig:
    """Everything a runner stub needs; defaults are the CLI defaults."""

    listen: str = "127.0.0.1:9190"  # or HOST:FIRST-LAST: one runner per port (runner_stub.host)
    slots: int = 4
    memory_mb: int = 1024
    nack_after_ms: int = 10
    cold_start_ms: int = 0
    image_pull_ms: int = 0  # fake image pull, first call per image (imagePullWaitDuration)
    warm_cache: int = 8
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    runner_id: str = ""  # "" = the address actually bound (port 0 resolved)
    drain_grace: float = 30.0  # seconds
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    register_with: str = ""  # LB admin HOST:PORT to self-register with; "" = off
    register_ttl: float = 10.0
    fail_rate: float = 0.0
    seed: int | None = None
    crash_after: int = 0  # 0 = never
    hang_ms: int = 0
    nack_delay_ms: int = 0
    # Who may call Close (drain this runner): principal patterns, comma-separated
    # (fnlb.authz); with TLS nobody unless listed.
    close_allow: str = ""
    allow_insecure_close: bool = False  # without TLS: Close from any address
    # List "ack" and acknowledge tries that ask for it (runner.proto); False:
    # behave as fn's runners (a try sent is a call committed).
    ack: bool = True
    # --otlp-endpoint: export runner.exec spans there (runner_stub.tracing); "" = off.
    otlp_endpoint: str = ""
    # Serve Runner/Watch and list "watch" (runner.proto, THE WATCH); False:
    # behave as a runner without it (the LB polls Status).
    watch: bool = True
    status_min_interval: float = 0.1  # seconds between two Watch messages, at least
    # Seconds of silence on a Watch stream, at most. Long: the LB's 1 s pings
    # ("keepalive") find a hung stub; an LB may ask for less (WatchRequest).
    watch_heartbeat: float = 30.0

    def __post_init__(self) -> None:
        try:
            split_listen(self.listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
        if self.otlp_endpoint and "://" not in self.otlp_endpoint:
            try:
                split_host_port(self.otlp_endpoint)
            except ValueError as e:
                raise ConfigError(f"--otlp-endpoint: {e}") from None
        if self.runner_id and self.port_range:
            raise ConfigError("--runner-id names one runner; with a --listen port range "
                              "each runner's id is its own address")
        if self.register_with and self.port_range:
            raise ConfigError("--register-with registers one runner; list a port range's "
                              "runners in the LB's --runners-file instead")
        for name, low in _INT_MINIMUMS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{flag_name(name)} must be an integer, got {value!r}")
            if value < low:
                raise ConfigError(f"{flag_name(name)} must be >= {low}, got {value}")
        if not (math.isfinite(self.register_ttl) and self.register_ttl >= 1):
            raise ConfigError(f"--register-ttl must be at least 1s, got {self.register_ttl}")
        if not (math.isfinite(self.drain_grace) and self.drain_grace >= 0):
            raise ConfigError(f"--drain-grace must be >= 0, got {self.drain_grace}")
        if not isinstance(self.ack, bool):
            raise ConfigError(f"--ack must be true or false, got {self.ack!r}")
        if not isinstance(self.watch, bool):
            raise ConfigError(f"--watch must be true or false, got {self.watch!r}")
        if not (math.isfinite(self.status_min_interval) and self.status_min_interval >= 0):
            raise ConfigError("--status-min-interval must be >= 0, "
                              f"got {self.status_min_interval}")
        if not (math.isfinite(self.watch_heartbeat) and self.watch_heartbeat >= 0.01):
            raise ConfigError(
                f"--watch-heartbeat must be at least 10ms, got {self.watch_heartbeat}")
        if self.watch_heartbeat < self.status_min_interval:
            raise ConfigError(f"--watch-heartbeat ({self.watch_heartbeat:g}s) must not be "
                              f"shorter than --status-min-interval ({self.status_min_interval:g}s)")
        if not (0.0 <= self.fail_rate <= 1.0):
            raise ConfigError(f"--fail-rate must be a fraction in 0..1, got {self.fail_rate}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, "
                              f"got {self.log_level!r}")
        given = {name: bool(getattr(self, name)) for name in ("tls_cert", "tls_key", "tls_ca")}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(flag_name(n) for n, ok in given.items() if not ok)
            raise ConfigError(f"--tls-cert, --tls-key and --tls-ca go together: missing {missing}")
        named = [p.text for p in self.close_patterns() if p.kind == "identity"]
        if named and not self.tls:
            raise ConfigError(f"--close-allow {','.join(named)}: identities come from client "
                              "certificates; set --tls-cert/--tls-key/--tls-ca (or allow "
                              "addresses: ip:CIDR, loopback)")
        if self.allow_insecure_close and self.tls:
            raise ConfigError("--allow-insecure-close is for runners without TLS; with "
                              "--tls-* list who may drain this runner in --close-allow")

    def close_patterns(self) -> tuple[Any, ...]:
        """``--close-allow`` parsed (``fnlb.authz.Pattern``); a bad entry names the flag."""
        from fnlb.authz import parse_patterns, split_list

        return parse_patterns(split_list(self.close_allow), "--close-allow")

    @property
    def port_range(self) -> bool:
        """True when ``listen`` is a range (HOST:FIRST-LAST): serve with ``RunnerHost``."""
        return "-" in self.listen.rpartition(":")[2]

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def read_tls(self) -> TlsFiles | None:
        """Read and check the PEM files (None without TLS); a bad one names its flag.

        The certificate must match its key and be valid now; the CA file must
        hold certificates. (It need not have issued our own certificate: it is
        only what client certificates are checked against.)
        """
        if not self.tls:
            return None
        # Imported here: cryptography and grpc are slow to import, and only TLS needs them.
        from cryptography import x509

        from fnlb.tls import TLSConfigError
        from fnlb.tls import TLSFiles as PairFiles

        pem: dict[str, bytes] = {}
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            try:
                pem[name] = Path(path).read_bytes()
            except OSError as e:
                raise ConfigError(f"{flag_name(name)}: cannot read {path!r}: "
                                  f"{e.strerror or e}") from None
        try:
            pair = PairFiles(cert=Path(self.tls_cert), key=Path(self.tls_key)).load()
        except TLSConfigError as e:
            raise ConfigError(f"--tls-cert/--tls-key: {e}") from None
        try:
            x509.load_pem_x509_certificates(pem["tls_ca"])
        except ValueError as e:
            raise ConfigError(f"--tls-ca: {self.tls_ca!r} holds no usable PEM certificate: "
                              f"{e}") from None
        return TlsFiles(cert=pair.cert_pem, key=pair.key_pem, ca=pem["tls_ca"])
