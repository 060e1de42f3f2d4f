"""Runner address parsing shared by every pool.

An address may name the runner's protocol: ``fn://HOST:PORT`` (fn's
RunnerProtocol) or ``fnlb://HOST:PORT`` (fnlb.v1.Runner); without one,
``--runner-protocol`` decides. The scheme stays part of the address (the
pool's key), so ``fn://a:1`` and ``a:1`` are two members.
"""

from __future__ import annotations

import ipaddress
import re

from fnlb.errors import ConfigError

__all__ = ["SCHEMES", "parse_address", "parse_address_list", "split_scheme"]

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")

# The runner protocols an address may name (fnlb.transport.fn_runner).
SCHEMES = ("fn", "fnlb")


def split_scheme(address: str) -> tuple[str | None, str]:
    """``("fn", "h:1")`` for ``fn://h:1``; ``(None, "h:1")`` for ``h:1``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return None, address
    return scheme, rest


def parse_address(text: str, *, source: str = "--runners", scheme: bool = True) -> str:
    """Validate ``HOST:PORT`` (``[v6]:PORT`` for IPv6) and return it normalised.

    ``scheme``: also take ``fn://`` or ``fnlb://`` in front (kept, lower case).
    """
    s = text.strip()
    prefix = ""
    if "://" in s:
        name, s = split_scheme(s)
        name = (name or "").lower()
        if not scheme or name not in SCHEMES:
            allowed = " or ".join(f"{n}://" for n in SCHEMES) if scheme else "none"
            raise ConfigError(f"{source}: unknown protocol in runner address {text!r} "
                              f"(allowed: {allowed})")
        prefix = f"{name}://"
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
    return f"{prefix}{host_out}:{int(port)}"


def parse_address_list(text: str, *, source: str = "--runners") -> list[str]:
    """Comma- or whitespace-separated addresses; duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for part in re.split(r"[,\s]+", text.strip()):
        if part:
            seen[parse_address(part, source=source)] = None
    return list(seen)
