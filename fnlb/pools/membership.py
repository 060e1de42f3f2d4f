"""Pool membership: which runners exist, who names them, retire-then-close.

Sources (``StaticSource``, ``FileSource``, ``DnsSource``) and the Admin API
name addresses; a runner is a member while at least one source names it (a
registration with a TTL names it until it expires).

Per address there is exactly one ``Member``: the ``Runner`` the factory built
(one channel), its health and probe state. It is made when the address first
appears and retired when the last source lets go: it stops being offered at
once, its in-flight calls finish, and only then is its channel closed. An
address that comes back before that reuses the same member.

How many calls run on a runner is not kept here: the LB's ``LoadTracker`` owns
that count, and ``Members`` listens to it to close a retired runner's channel
when its last call ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fnlb.errors import FnlbError
from fnlb.logs import kv
from fnlb.metrics import POOL_STATES, Metrics
from fnlb.placers.load import LoadTracker
from fnlb.pools._address import parse_address
from fnlb.pools.health import RunnerHealth
from fnlb.runnerpool import MTLSRunnerFactory, Runner, RunnerStatus

__all__ = [
    "ADMIN",
    "REGISTERED",
    "Member",
    "Members",
    "MembershipError",
    "RunnerView",
    "UnknownRunner",
]

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

log = logging.getLogger(__name__)

ADMIN = "admin"  # added with Admin/AddRunner, no TTL
REGISTERED = "registered"  # added with a TTL: a runner's own heartbeat
ADMIN_SOURCES = (ADMIN, REGISTERED)


class MembershipError(FnlbError):
    """The change contradicts a source (e.g. removing a runner DNS lists)."""


class UnknownRunner(FnlbError, KeyError):
    """No runner at that address is in the pool."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown runner"


@dataclass(frozen=True, slots=True)
class RunnerView:
    """One runner as Admin/ListRunners shows it."""

    address: str
    state: str
    sources: tuple[str, ...]
    inflight: int
    placed: int
    consecutive_failures: int
    last_error: str
    last_status_at: str
    status: RunnerStatus | None
    ttl_remaining_s: float | None
    # The runner protocol it speaks ("fnlb", "fn"; "" while not yet learned).
    protocol: str = ""


class Member:
    """Everything the pool keeps about one runner address (plain data)."""

    __slots__ = ("address", "runner", "sources", "health", "placed", "status", "status_at",
                 "up", "admin_drained", "reported_draining", "retired", "closing",
                 "detached_until", "next_probe", "blocked_logged", "handle", "watch",
                 "call_ok_at")

    def __init__(self, address: str, runner: Runner, health: RunnerHealth) -> None:
        self.address = address
        self.runner = runner
        self.sources: dict[str, float | None] = {}  # source -> expiry (monotonic) or None
        self.health = health
        self.placed = 0
        self.status: RunnerStatus | None = None
        self.status_at = ""
        # None: never heard from; True: its last probe (or a call) went through;
        # False: a probe or a call could not reach it. Only runners that are up
        # are offered while any is (see OutlierDetector.offered).
        self.up: bool | None = None
        self.admin_drained = False
        self.reported_draining = False
        self.retired = False
        self.closing = False
        self.detached_until = 0.0  # a detached call's result may be read until then
        self.next_probe = 0.0
        # When a call last ran here (its outcome showed a working runner): over
        # the poll budget such a runner is not polled (fnlb.pools.prober).
        self.call_ok_at = -1e18
        self.blocked_logged = False
        self.handle: Runner = runner  # what placers get; the pool wraps it
        self.watch: Any = None  # fnlb.pools.watch.WatchState once a Watch was opened

    @property
    def watched(self) -> bool:
        """The runner pushes its status (Runner/Watch): the prober leaves it alone."""
        return self.watch is not None and bool(self.watch.streaming)

    @property
    def draining(self) -> bool:
        return self.admin_drained or self.reported_draining

    def state(self) -> str:
        if self.retired:
            return "retiring"
        if self.draining:
            return "draining"
        if self.health.ejected:
            return "ejected"
        if self.up is None:
            return "unknown"
        return "healthy" if self.up else "suspect"


def ip_order(address: str) -> tuple[int, str]:
    # Deterministic across LB replicas; IPv4 before IPv6 before names.
    return (1 if address.startswith("[") else 0, address)


class Members:
    """The member table: sources in, members and retiring runners out.

    ``new_member(member)`` lets the pool dress a new member (its placer handle);
    ``joined(member)`` tells it one joined or came back.
    """

    def __init__(self, factory: MTLSRunnerFactory, tls: ClientTLS | None, *,
                 load: LoadTracker, metrics: Metrics,
                 new_health: Callable[[], RunnerHealth],
                 new_member: Callable[[Member], None],
                 joined: Callable[[Member], None],
                 clock: Callable[[], float]) -> None:
        self._factory = factory
        self._tls = tls
        self._load = load
        self._metrics = metrics
        self._new_health = new_health
        self._new_member = new_member
        self._joined = joined
        self._clock = clock
        self._members: dict[str, Member] = {}
        self._retiring: dict[str, Member] = {}
        self.source_errors: dict[str, str] = {}
        self.closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self.closed_channels = 0  # runners closed so far (their memory can be trimmed)
        load.subscribe(self._call_ended)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, address: str) -> bool:
        return address in self._members

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def retiring(self) -> list[Member]:
        return list(self._retiring.values())

    def inflight(self, m: Member) -> int:
        return self._load.inflight(m.address)

    def get(self, address: str) -> Member:
        """The member at ``address`` (validated); UnknownRunner if there is none."""
        address = parse_address(address, source="address")
        m = self._members.get(address)
        if m is None:
            raise UnknownRunner(f"runner {address} is not in the pool")
        return m

    # -- sources -------------------------------------------------------------------

    def set_source(self, source: str, addresses: Iterable[str]) -> bool:
        """``source`` now names exactly ``addresses``; True if membership changed."""
        wanted = set(addresses)
        changed = False
        for m in [m for m in self._members.values() if source in m.sources]:
            if m.address not in wanted:
                changed |= self._drop_source(m, source)
        for address in wanted:
            changed |= self.add_source(address, source, None)
        return changed

    def source_error(self, source: str, error: str | None) -> None:
        if error is None:
            self.source_errors.pop(source, None)
        else:
            if self.source_errors.get(source) != error:
                self._metrics.discovery_errors.labels(source).inc()
            self.source_errors[source] = error

    def add_source(self, address: str, source: str, expiry: float | None) -> bool:
        """Name ``address`` by ``source``; True if membership changed."""
        m = self._members.get(address)
        if m is not None:
            new = source not in m.sources
            m.sources[source] = expiry
            return new
        if self.closed:
            return False
        m = self._retiring.pop(address, None)
        if m is not None and not m.closing:
            # Back before its channel closed: reuse it rather than dial twice.
            m.retired = False
            m.health = self._new_health()
        else:
            m = Member(address, self._factory(address, self._tls), self._new_health())
            self._new_member(m)
        m.sources[source] = expiry
        self._members[address] = m
        self._metrics.pool_changes.labels("added").inc()
        fields = kv(runner=address, source=source)
        if expiry is not None:
            fields["kv"]["ttl_s"] = f"{expiry - self._clock():g}"
        log.info("runner added", extra=fields)
        self._joined(m)
        return True

    def remove_admin(self, address: str) -> bool:
        """Drop what the Admin API added; a source-named runner is a MembershipError."""
        m = self.get(address)
        others = sorted(s for s in m.sources if s not in ADMIN_SOURCES)
        if others:
            raise MembershipError(
                f"runner {m.address} comes from {', '.join(others)}: remove it there, "
                "or drain it (Admin/DrainRunner)")
        changed = False
        for src in ADMIN_SOURCES:
            if src in m.sources:
                changed |= self._drop_source(m, src)
        return changed

    def expire(self, now: float) -> bool:
        """Drop registrations whose TTL ran out; True if membership changed."""
        # Collected first (no copies per member): this runs every tick over every runner.
        expired = [(m, src) for m in self._members.values()
                   for src, expiry in m.sources.items() if expiry is not None and expiry <= now]
        changed = False
        for m, src in expired:
            log.info("runner registration expired", extra=kv(runner=m.address))
            changed |= self._drop_source(m, src)
        return changed

    def next_expiry(self, now: float) -> float | None:
        """The earliest TTL expiry, or deadline of a retired runner's detached calls."""
        times = [e for m in self._members.values() for e in m.sources.values() if e is not None]
        times += [m.detached_until for m in self._retiring.values() if m.detached_until > now]
        return min(times, default=None)

    def _drop_source(self, m: Member, source: str) -> bool:
        if m.sources.pop(source, "absent") == "absent":
            return False
        if m.sources:
            return False
        self._retire(m)
        return True

    # -- retire, then close ----------------------------------------------------------

    def _retire(self, m: Member) -> None:
        del self._members[m.address]
        m.retired = True
        self._retiring[m.address] = m
        self._load.forget(m.address)
        self._metrics.pool_changes.labels("removed").inc()
        log.info("runner removed", extra=kv(runner=m.address, inflight=self.inflight(m)))
        self.maybe_close(m)

    def _call_ended(self, address: str, left: int) -> None:
        if left == 0:
            m = self._retiring.get(address)
            if m is not None:
                self.maybe_close(m)

    def maybe_close(self, m: Member) -> None:
        """Close a removed runner's channel once nothing of ours runs on it."""
        if (not m.retired or m.closing or self.inflight(m)
                or self._clock() < m.detached_until):
            return
        m.closing = True
        task = asyncio.get_running_loop().create_task(self._close(m))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_idle(self) -> None:
        for m in list(self._retiring.values()):
            self.maybe_close(m)

    async def _close(self, m: Member) -> None:
        m.closing = True
        self.closed_channels += 1
        try:
            await m.runner.close()
        except Exception as e:  # closing is best effort; never kill the pool for it
            log.warning("closing runner failed", extra=kv(runner=m.address, error=repr(e)))
        finally:
            if self._retiring.get(m.address) is m:
                del self._retiring[m.address]
            self.set_gauges()

    async def closes_done(self) -> None:
        """Wait until every close started so far has finished."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def close_all(self) -> None:
        """Shutdown: retire and close every runner at once."""
        self.closed = True
        members = [*self._members.values(), *self._retiring.values()]
        self._members.clear()
        self._retiring.clear()
        for m in members:
            m.retired = True
            await self._close(m)
        for t in list(self._closing):
            t.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)

    # -- what Admin and the gauges read --------------------------------------------

    def set_gauges(self) -> None:
        counts = dict.fromkeys(POOL_STATES, 0)
        for m in self._members.values():
            counts[m.state()] += 1
        counts["retiring"] = len(self._retiring)
        for state, n in counts.items():
            self._metrics.pool_runners.labels(state).set(n)

    def views(self) -> list[RunnerView]:
        now = self._clock()
        out = []
        for m in sorted([*self._members.values(), *self._retiring.values()],
                        key=lambda m: ip_order(m.address)):
            expiry = m.sources.get(REGISTERED)
            ttl = None if expiry is None else expiry - now
            out.append(RunnerView(
                address=m.address, state=m.state(), sources=tuple(sorted(m.sources)),
                inflight=self.inflight(m), placed=m.placed,
                consecutive_failures=m.health.failures, last_error=m.health.last_error,
                last_status_at=m.status_at, status=m.status,
                ttl_remaining_s=None if ttl is None else max(ttl, 0.0),
                protocol=getattr(m.runner, "protocol", "")))
        return out

    def counts(self) -> tuple[int, int]:
        """(members, retiring): for tests and debugging."""
        return len(self._members), len(self._retiring)
