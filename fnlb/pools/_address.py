"""Runner address parsing shared by every pool."""

from __future__ import annotations

import ipaddress
import re

from fnlb.errors import ConfigError

__all__ = ["parse_address", "parse_address_list"]

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")


def parse_address(text: str, *, source: str = "--runners") -> str:
    """Validate ``HOST:PORT`` (``[v6]:PORT`` for IPv6) and return it normalised."""
    s = text.strip()
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{source}: bad IPv6 address in {text!r}") from None
        host_out = f"[{host}]"
    else:
        host, sep, port = s.rpartition(":")
        host_out = host
        if not sep or not host:
            raise ConfigError(f"{source}: runner address {text!r} must be HOST:PORT")
        if ":" in host:
            raise ConfigError(f"{source}: write IPv6 runner addresses as [ADDR]:PORT, got {text!r}")
        if not _HOST.match(host):
            raise ConfigError(f"{source}: bad host in runner address {text!r}")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{source}: bad port in runner address {text!r} (1-65535)")
    return f"{host_out}:{int(port)}"


def parse_address_list(text: str, *, source: str = "--runners") -> list[str]:
    """Comma- or whitespace-separated addresses; duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for part in re.split(r"[,\s]+", text.strip()):
        if part:
            seen[parse_address(part, source=source)] = None
    return list(seen)
