"""File and DNS membership sources, against a real file and a tiny DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from fnlb.config import LBConfig
from fnlb.errors import ConfigError, PoolError
from fnlb.harness import wait_until
from fnlb.metrics import Metrics
from fnlb.pools import DynamicRunnerPool, make_sources
from fnlb.pools.dns import DnsPythonLookup, DnsSource, DnsTarget, parse_discovery
from fnlb.pools.file import FileSource, parse_runners_file
from fnlb.pools.health import HealthConfig
from tests.fakes import make_call
from tests.helpers import sample
from tests.test_pools import FakeFactory, offered


def new_pool(*sources: Any) -> tuple[DynamicRunnerPool, FakeFactory]:
    factory = FakeFactory()
    return DynamicRunnerPool(factory, sources=sources, health=HealthConfig(slow_start=0),
                             metrics=Metrics()), factory


# -- file ------------------------------------------------------------------------

def write(path: Path, text: str) -> None:
    """Write and move the mtime on, so even a same-size rewrite is a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_parse_runners_file() -> None:
    text = "# pool\n\n127.0.0.1:1  # first\n[::1]:2\n127.0.0.1:1\n   \n"
    assert parse_runners_file(text) == ["127.0.0.1:1", "[::1]:2"]
    with pytest.raises(Exception, match=r"f:3: .*one address per line"):
        parse_runners_file("127.0.0.1:1\n#\n127.0.0.1:2 127.0.0.1:3\n", "f")
    with pytest.raises(Exception, match=r"f:2: .*bad port"):
        parse_runners_file("127.0.0.1:1\nhost:99999\n", "f")


async def test_file_source_add_remove_and_malformed(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "runners"
    write(path, "127.0.0.1:9001\n127.0.0.1:9002\n")
    source = FileSource(path, interval=60)
    pool, factory = new_pool(source)
    await pool.start(watch=False)
    assert await offered(pool) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    write(path, "127.0.0.1:9002\n# 9001 left\n127.0.0.1:9003\n")
    await source.refresh()
    assert await offered(pool) == ["127.0.0.1:9002", "127.0.0.1:9003"]
    assert factory.last("127.0.0.1:9001").closed or pool.member_count()[1] == 1
    write(path, "127.0.0.1:9002\nnot an address\n")
    await source.refresh()
    assert await offered(pool) == ["127.0.0.1:9002", "127.0.0.1:9003"]  # previous set kept
    assert any(":2:" in r.getMessage() + str(getattr(r, "kv", "")) for r in caplog.records)
    path.unlink()
    await source.refresh()
    assert await offered(pool) == ["127.0.0.1:9002", "127.0.0.1:9003"]
    write(path, "127.0.0.1:9004\n")
    await source.refresh()
    assert await offered(pool) == ["127.0.0.1:9004"]
    await pool.shutdown()
    assert factory.live == 0


async def test_file_source_unchanged_file_is_not_reapplied(tmp_path: Path) -> None:
    path = tmp_path / "runners"
    write(path, "127.0.0.1:9001\n")
    source = FileSource(path, interval=60)
    pool, _ = new_pool(source)
    await pool.start(watch=False)
    pool.add("127.0.0.1:9009")
    snap = pool.snapshot()
    await source.refresh()
    assert pool.snapshot() is snap
    await pool.shutdown()


async def test_bad_file_at_startup_is_a_config_error(tmp_path: Path) -> None:
    pool, _ = new_pool(FileSource(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="missing"):
        await pool.start(watch=False)
    (tmp_path / "bad").write_text("127.0.0.1:1\n127.0.0.1\n")
    pool, _ = new_pool(FileSource(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"bad:2"):
        await pool.start(watch=False)


async def test_file_source_polls_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "runners"
    write(path, "127.0.0.1:9001\n")
    pool, _ = new_pool(FileSource(path, interval=0.02))
    await pool.start()
    write(path, "127.0.0.1:9005\n")
    await wait_until(lambda: pool.snapshot() and pool.snapshot()[0].address == "127.0.0.1:9005",
                     5, "file change seen")
    await pool.shutdown()


# -- DNS URIs --------------------------------------------------------------------------

def test_parse_discovery() -> None:
    assert parse_discovery("dns:///runners.fn.svc.cluster.local:9190") == DnsTarget(
        "runners.fn.svc.cluster.local", 9190)
    assert parse_discovery("dns+srv:///_grpc._tcp.runners.fn.svc") == DnsTarget(
        "_grpc._tcp.runners.fn.svc", 0, srv=True)
    t = parse_discovery("dns://127.0.0.1:5353/runners:9190")
    assert t.nameserver == ("127.0.0.1", 5353) and t.uri == "dns://127.0.0.1:5353/runners:9190"
    assert parse_discovery("dns://10.0.0.10/r:1").nameserver == ("10.0.0.10", 53)
    for bad, needle in (("runners:9190", "expected dns"), ("dns:///runners", "port"),
                        ("dns:///", "missing name"), ("dns+srv:///_x._tcp.r:1", "drop the port"),
                        ("dns://ns.example/r:1", "IP address"), ("http:///r:1", "expected"),
                        ("dns:///r:0", "port")):
        with pytest.raises(ConfigError, match=needle):
            parse_discovery(bad)
    with pytest.raises(ConfigError, match="--discovery"):
        LBConfig(discovery="dns:///nope")
    with pytest.raises(ConfigError, match="admin-listen"):
        LBConfig(discovery="registration", admin_listen="")
    assert make_sources(discovery="registration") == []


# -- a tiny DNS server ------------------------------------------------------------------

class TinyDns(asyncio.DatagramProtocol):
    """Answers A, AAAA and SRV from ``records``; ``mode`` "servfail"/"drop" breaks it."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.mode = "ok"
        self.queries = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        if self.mode == "drop":
            return
        query = dns.message.from_wire(data)
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.RA
        q = query.question[0]
        name = q.name.to_text().rstrip(".")
        rdtype = dns.rdatatype.to_text(q.rdtype)
        if self.mode == "servfail":
            resp.set_rcode(dns.rcode.SERVFAIL)
        elif not any(n == name for n, _ in self.records):
            resp.set_rcode(dns.rcode.NXDOMAIN)
        elif self.records.get((name, rdtype)):
            resp.answer.append(dns.rrset.from_text(q.name, 5, "IN", rdtype,
                                                   *self.records[(name, rdtype)]))
        assert self.transport is not None
        self.transport.sendto(resp.to_wire(), addr)


@contextlib.asynccontextmanager
async def tiny_dns() -> AsyncIterator[tuple[TinyDns, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(TinyDns, local_addr=("127.0.0.1", 0))
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def tiny_dns_source(uri: str, interval: float) -> DnsSource:
    """A DnsSource for ``uri``, resolving with a short timeout (tiny_dns may drop queries)."""
    target = parse_discovery(uri)
    return DnsSource(target, interval=interval,
                     lookup=DnsPythonLookup(target.nameserver, timeout=0.3))


async def test_dns_a_aaaa_records_follow_changes_and_failures_keep_the_last_set() -> None:
    async with tiny_dns() as (server, port):
        server.records[("runners.test", "A")] = ["10.1.0.2", "10.1.0.1"]
        server.records[("runners.test", "AAAA")] = ["fd00::7"]
        source = tiny_dns_source(f"dns://127.0.0.1:{port}/runners.test:9190", interval=60)
        pool, factory = new_pool(source)
        await pool.start(watch=False)
        assert await offered(pool) == ["10.1.0.1:9190", "10.1.0.2:9190", "[fd00::7]:9190"]
        server.records[("runners.test", "A")] = ["10.1.0.2", "10.1.0.3"]  # one left, one joined
        await source.refresh()
        assert await offered(pool) == ["10.1.0.2:9190", "10.1.0.3:9190", "[fd00::7]:9190"]
        assert len(factory.made["10.1.0.2:9190"]) == 1  # kept, not rebuilt
        for mode in ("servfail", "drop"):
            server.mode = mode
            before = server.queries
            await source.refresh()
            assert server.queries > before  # it did ask
            assert await offered(pool) == ["10.1.0.2:9190", "10.1.0.3:9190", "[fd00::7]:9190"]
        server.mode = "ok"
        del server.records[("runners.test", "A")]
        del server.records[("runners.test", "AAAA")]  # NXDOMAIN: kept too
        await source.refresh()
        assert len(await offered(pool)) == 3
        assert sample(pool.metrics, "fnlb_discovery_errors_total", {"source": "dns"}) == 3
        server.records[("runners.test", "A")] = ["10.1.0.9"]
        await source.refresh()
        assert await offered(pool) == ["10.1.0.9:9190"]
        await pool.shutdown()


async def test_dns_srv_records_resolve_targets_with_their_ports() -> None:
    async with tiny_dns() as (server, port):
        name = "_grpc._tcp.runners.test"
        server.records[(name, "SRV")] = ["0 0 9190 r1.runners.test.", "0 0 9191 r2.runners.test."]
        server.records[("r1.runners.test", "A")] = ["10.2.0.1"]
        server.records[("r2.runners.test", "A")] = ["10.2.0.2"]
        source = tiny_dns_source(f"dns+srv://127.0.0.1:{port}/{name}", interval=60)
        pool, _ = new_pool(source)
        await pool.start(watch=False)
        assert await offered(pool) == ["10.2.0.1:9190", "10.2.0.2:9191"]
        server.records[(name, "SRV")] = ["0 0 9190 r1.runners.test.", "0 0 9192 r3.runners.test."]
        await source.refresh()  # r3 does not resolve: the rest is still taken
        assert await offered(pool) == ["10.2.0.1:9190"]
        await pool.shutdown()


async def test_unresolvable_name_at_startup_is_not_fatal_but_says_why() -> None:
    async with tiny_dns() as (server, port):
        source = tiny_dns_source(f"dns://127.0.0.1:{port}/later.test:9190", interval=0.05)
        pool, _ = new_pool(source)
        await pool.start()
        with pytest.raises(PoolError, match="NXDOMAIN") as e:
            await pool.runners(make_call())
        assert e.value.retryable
        server.records[("later.test", "A")] = ["10.3.0.1"]
        await wait_until(pool.snapshot, 5, "the poll loop to find the name")
        assert await offered(pool) == ["10.3.0.1:9190"]
        await pool.shutdown()


class FakeLookup:
    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}

    async def addresses(self, name: str) -> list[str]:
        from fnlb.pools import SourceError

        if name not in self.answers:
            raise SourceError(f"dns: {name}: no such name")
        return self.answers[name]

    async def srv(self, name: str) -> list[tuple[str, int]]:
        raise AssertionError("not used")


async def test_dns_churn_with_injected_lookup_keeps_pool_consistent() -> None:
    lookup = FakeLookup()
    source = DnsSource(DnsTarget("r.test", 9190), interval=60, lookup=lookup)
    pool, factory = new_pool(source)
    lookup.answers["r.test"] = ["10.0.0.1"]
    await pool.start(watch=False)
    rng = random.Random(5)
    for _ in range(300):
        ips = sorted({f"10.0.0.{rng.randint(1, 20)}" for _ in range(rng.randint(1, 6))})
        lookup.answers["r.test"] = ips
        await source.refresh()
        assert await offered(pool) == sorted(f"{ip}:9190" for ip in ips)
    await asyncio.sleep(0)
    assert factory.live == len(pool.snapshot()) + pool.member_count()[1]
    await pool.shutdown()
    assert factory.live == 0
