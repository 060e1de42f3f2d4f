"""Runner pools: where placers get their runners from.

``DynamicRunnerPool`` holds the runners; membership *sources* feed it, each
selected by a flag (a registry by name, built by ``make_sources``):

=========  ==========================  ===================================
source     flag                        module
=========  ==========================  ===================================
static     ``--runners A,B``           ``fnlb.pools.static.StaticSource``
file       ``--runners-file PATH``     ``fnlb.pools.file.FileSource``
dns        ``--discovery dns:///N:P``  ``fnlb.pools.dns.DnsSource``
admin      Admin/AddRunner             ``DynamicRunnerPool.add``
=========  ==========================  ===================================

The pool itself is composed of parts, one role each: ``membership``
(sources, TTLs, retire-then-close), ``health`` (one runner's failures and
back-off), ``outlier`` (ejection limits, panic, slow start), ``prober``
(Status polls), ``watch`` (Runner/Watch streams in place of polls, for
runners that list "watch") and ``dynamic`` (the thin ``DynamicRunnerPool``
joining them).
"""

from __future__ import annotations

from pathlib import Path

from fnlb.pools._address import parse_address, parse_address_list
from fnlb.pools._source import Membership, PollingSource, Source, SourceError
from fnlb.pools.dynamic import (
    ADMIN,
    REGISTERED,
    DynamicRunnerPool,
    MembershipError,
    PooledRunner,
    RunnerView,
    UnknownRunner,
)
from fnlb.pools.static import StaticSource

__all__ = [
    "ADMIN",
    "REGISTERED",
    "DynamicRunnerPool",
    "Membership",
    "MembershipError",
    "PollingSource",
    "PooledRunner",
    "RunnerView",
    "SOURCES",
    "Source",
    "SourceError",
    "StaticSource",
    "UnknownRunner",
    "make_sources",
    "parse_address",
    "parse_address_list",
]

# The source names a runner can show in Admin/ListRunners.
SOURCES = ("static", "file", "dns", ADMIN, REGISTERED)


def make_sources(runners: tuple[str, ...] = (), runners_file: Path | None = None,
                 discovery: str = "", *, file_interval: float = 1.0,
                 discovery_interval: float = 5.0) -> list[Source]:
    """The sources the serve flags ask for (any combination; the pool is their union)."""
    sources: list[Source] = []
    if runners:
        sources.append(StaticSource(runners))
    if runners_file is not None:
        from fnlb.pools.file import FileSource

        sources.append(FileSource(runners_file, file_interval))
    if discovery and discovery != "registration":  # registration: Admin adds runners
        from fnlb.pools.dns import DnsSource, parse_discovery

        sources.append(DnsSource(parse_discovery(discovery), discovery_interval))
    return sources
