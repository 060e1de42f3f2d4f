"""DNS pool (``--discovery``): runner addresses from DNS, re-resolved on an interval.

Two forms, after gRPC's target names::

    dns:///runners.fn.svc.cluster.local:9190      A and AAAA records, one port
    dns+srv:///_grpc._tcp.runners.fn.svc.cluster.local
                                                  SRV records: each target's A/AAAA
                                                  records with the SRV port
    dns://10.96.0.10:53/runners.fn.svc:9190       ask this DNS server instead of
                                                  the system's (/etc/resolv.conf)

A Kubernetes headless Service answers with one A record per ready pod, so the
pool follows the runner Deployment as it scales and rolls.

Failures keep the last good set: a lookup that times out, or an answer with no
records (NXDOMAIN, NODATA), does not empty the pool; dead runners left in it
are ejected by health checking instead. At startup a name that does not
resolve is *not* fatal (in Kubernetes the LB often starts before any runner is
ready): the pool stays empty, the error is logged, and placement fails calls
with a retryable UNAVAILABLE naming the lookup error until a lookup succeeds.

Resolution uses dnspython (``dns.asyncresolver``): asyncio-native, so lookups
never block the LB's loop or tie up threads, it does SRV, which the standard
library cannot, and it can be pointed at a given server (tests run one on
127.0.0.1). Names are resolved with the search list of /etc/resolv.conf, like
getaddrinfo would.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from fnlb.errors import ConfigError
from fnlb.pools._address import parse_address
from fnlb.pools._source import PollingSource, SourceError

__all__ = ["DnsLookup", "DnsSource", "DnsTarget", "DnsPythonLookup", "parse_discovery"]

SCHEMES = ("dns", "dns+srv")


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """A parsed ``--discovery`` URI."""

    name: str
    port: int = 0  # 0 for SRV: the records carry the ports
    srv: bool = False
    nameserver: tuple[str, int] | None = None  # None: the system's resolvers

    @property
    def uri(self) -> str:
        scheme = "dns+srv" if self.srv else "dns"
        auth = ""
        if self.nameserver is not None:
            host, port = self.nameserver
            auth = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{scheme}://{auth}/{self.name}" + (f":{self.port}" if self.port else "")


def parse_discovery(uri: str) -> DnsTarget:
    """Parse ``dns:///NAME:PORT`` or ``dns+srv:///NAME``; ConfigError names --discovery."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"--discovery: expected dns:///NAME:PORT or dns+srv:///NAME, got {uri!r}")
    authority, slash, target = rest.partition("/")
    if not slash or not target:
        raise ConfigError(f"--discovery: missing name in {uri!r} (write three slashes: "
                          "dns:///NAME:PORT)")
    nameserver = None
    if authority:
        server = authority if authority.rpartition(":")[2].isdigit() else f"{authority}:53"
        ns_host, _, ns_port = parse_address(
            server, source="--discovery DNS server", scheme=False).rpartition(":")
        try:
            ipaddress.ip_address(ns_host.strip("[]"))
        except ValueError:
            raise ConfigError(f"--discovery: the DNS server must be an IP address, got "
                              f"{authority!r}") from None
        nameserver = (ns_host.strip("[]"), int(ns_port))
    srv = scheme == "dns+srv"
    port = 0
    if srv:
        name = target
        if ":" in name:
            raise ConfigError(f"--discovery: dns+srv takes ports from the SRV records; drop "
                              f"the port from {target!r}")
    else:
        if ":" not in target:
            raise ConfigError(f"--discovery: {uri!r} needs the runners' port: "
                              f"dns:///{target}:9190")
        # parse_address checks the host syntax and the port range.
        name, _, port_text = parse_address(
            target, source="--discovery", scheme=False).rpartition(":")
        port = int(port_text)
    name = name.rstrip(".") if name.endswith(".") and len(name) > 1 else name
    if not name or len(name) > 253:
        raise ConfigError(f"--discovery: bad name in {uri!r}")
    return DnsTarget(name=name, port=port, srv=srv, nameserver=nameserver)


class DnsLookup(Protocol):
    """What the DNS source asks of a resolver (tests inject fakes)."""

    async def addresses(self, name: str) -> list[str]:
        """IP addresses (A and AAAA) of ``name``; SourceError when there are none."""
        ...

    async def srv(self, name: str) -> list[tuple[str, int]]:
        """(target, port) of ``name``'s SRV records; SourceError when there are none."""
        ...


class DnsPythonLookup:
    """``DnsLookup`` with dnspython's asyncio resolver."""

    def __init__(self, nameserver: tuple[str, int] | None = None, timeout: float = 5.0) -> None:
        import dns.asyncresolver
        import dns.resolver

        try:
            resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        except dns.resolver.NoResolverConfiguration as e:
            raise ConfigError(f"--discovery: no DNS configuration ({e}); name a server: "
                              "dns://IP:53/NAME:PORT") from None
        if nameserver is not None:
            resolver.nameservers = [nameserver[0]]
            resolver.port = nameserver[1]
        resolver.lifetime = timeout
        resolver.timeout = timeout
        self._resolver = resolver

    async def _query(self, name: str, rdtype: str) -> list[object]:
        import dns.exception
        import dns.resolver

        try:
            answer = await self._resolver.resolve(name, rdtype, search=True)
        except dns.resolver.NXDOMAIN:
            raise SourceError(f"dns: {name}: no such name (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.NoNameservers as e:
            raise SourceError(f"dns: {name}: no DNS server answered: {e}") from None
        except dns.exception.Timeout:
            raise SourceError(f"dns: {name}: {rdtype} lookup timed out") from None
        except dns.exception.DNSException as e:
            raise SourceError(f"dns: {name}: {type(e).__name__}: {e}") from None
        return list(answer)

    async def addresses(self, name: str) -> list[str]:
        got = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"),
                                   return_exceptions=True)
        ips: list[str] = []
        errors: list[str] = []
        for result in got:
            if isinstance(result, BaseException):
                if not isinstance(result, SourceError):
                    raise result
                errors.append(str(result))
            else:
                ips.extend(str(r) for r in result)
        if not ips:
            raise SourceError(errors[0] if errors else f"dns: {name}: no A or AAAA records")
        return ips

    async def srv(self, name: str) -> list[tuple[str, int]]:
        records = await self._query(name, "SRV")
        if not records:
            raise SourceError(f"dns: {name}: no SRV records")
        out: list[tuple[str, int]] = []
        for r in records:
            target = str(getattr(r, "target")).rstrip(".")  # noqa: B009 - rdata is untyped
            out.append((target, int(getattr(r, "port"))))  # noqa: B009
        return out


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsSource(PollingSource):
    """Re-resolves a ``DnsTarget`` every ``interval`` seconds."""

    name = "dns"

    def __init__(self, target: DnsTarget, interval: float = 5.0,
                 lookup: DnsLookup | None = None) -> None:
        super().__init__(interval)
        self.target = target
        self._lookup = lookup if lookup is not None else DnsPythonLookup(
            target.nameserver, timeout=min(5.0, max(interval, 1.0)))

    async def load(self) -> list[str]:
        t = self.target
        if not t.srv:
            ips = await self._lookup.addresses(t.name)
            return sorted({_hostport(ip, t.port) for ip in ips})
        records = await self._lookup.srv(t.name)
        results = await asyncio.gather(*(self._lookup.addresses(target)
                                         for target, _ in records), return_exceptions=True)
        found: set[str] = set()
        errors: list[str] = []
        for (_, port), result in zip(records, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, SourceError):
                    raise result
                errors.append(str(result))  # one target gone: keep the others
                continue
            found.update(_hostport(ip, port) for ip in result)
        if not found:
            raise SourceError(errors[0] if errors else f"dns: {t.name}: no SRV target resolved")
        return sorted(found)
