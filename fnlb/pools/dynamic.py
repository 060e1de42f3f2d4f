"""A runner pool whose membership changes: the thin composition of its parts.

* ``Members`` (``membership.py``): sources, TTLs, add/remove, retire-then-close;
* ``OutlierDetector`` (``outlier.py``) over each runner's ``RunnerHealth``
  (``health.py``): ejection, panic, readmission, slow start;
* ``Prober`` (``prober.py``): Status polls and their back-off;
* the ``LoadTracker`` (``fnlb.placers.load``): the one count of calls in flight
  per runner, which placers, Admin and retirement all read, and where Status
  reports land.

Placers read ``runners()``: an immutable tuple rebuilt only when membership or
a runner's state changes, so a change mid-placement cannot disturb a call that
is walking an older tuple. The tuple is sorted by address, so every LB replica
orders the same runners the same way (consistent hashing agrees across LBs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import grpc

from fnlb.errors import PassedOn, PoolError, RunnerError, RunnerUnreachable
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.placers.load import LoadTracker
from fnlb.pools._address import parse_address
from fnlb.pools._source import Source
from fnlb.pools.health import HealthConfig, RunnerHealth, attempt_verdict
from fnlb.pools.membership import (
    ADMIN,
    REGISTERED,
    Member,
    Members,
    MembershipError,
    RunnerView,
    UnknownRunner,
)
from fnlb.pools.outlier import OutlierDetector
from fnlb.pools.prober import Prober
from fnlb.pools.watch import Watcher
from fnlb.runnerpool import DETACHED, Attempt, MTLSRunnerFactory, Runner, RunnerCall, RunnerStatus
from fnlb.timefmt import now_rfc3339

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

__all__ = [
    "ADMIN",
    "REGISTERED",
    "DynamicRunnerPool",
    "MembershipError",
    "PooledRunner",
    "RunnerView",
    "UnknownRunner",
]

log = logging.getLogger(__name__)


def _release_freed_memory() -> None:
    """Give memory freed by closed channels back to the OS (glibc's malloc_trim).

    gRPC's per-connection buffers are many small allocations; once freed they
    stay in malloc's arenas (RSS) until trimmed. Elsewhere a no-op.
    """
    global _malloc_trim
    if _malloc_trim is None:
        name = ctypes.util.find_library("c")
        try:
            _malloc_trim = ctypes.CDLL(name).malloc_trim if name else False
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None
_TRIM_EVERY_S = 5.0


@runtime_checkable
class Parkable(Protocol):
    """A runner whose channel can be closed while idle (``GrpcRunner``)."""

    @property
    def parked(self) -> bool: ...

    def idle_for(self, now: float) -> float: ...

    def may_park(self, now: float, idle: float) -> bool: ...

    async def park_if_idle(self, now: float, idle: float) -> bool: ...


# How long a detached call's result stream may still be read after acceptance,
# beyond its timeout (GrpcRunner drains it in the background for that long).
_DETACHED_SLACK_S = 30.0


class PooledRunner:
    """The ``Runner`` placers get: slow start and outlier detection around the real one."""

    __slots__ = ("_member", "_pool")

    def __init__(self, member: Member, pool: DynamicRunnerPool) -> None:
        self._member = member
        self._pool = pool

    def __repr__(self) -> str:
        return f"PooledRunner({self._member.address!r}, {self._member.state()})"

    @property
    def address(self) -> str:
        return self._member.address

    @property
    def inner(self) -> Runner:
        return self._member.runner

    async def try_exec(self, call: RunnerCall) -> Attempt:
        m = self._member
        refused = self._pool.refuse(m)
        if refused is not None:
            return refused
        result = await m.runner.try_exec(call)
        self._pool.attempted(m, call, result)
        return result

    async def status(self) -> RunnerStatus:
        return await self._member.runner.status()

    async def close(self) -> None:
        """The pool owns the channel; it closes it when the runner leaves."""
        return None


class DynamicRunnerPool:
    """Membership from sources and the Admin API, with health checking.

    ``async with DynamicRunnerPool(factory, sources=[StaticSource([...])]) as pool:``

    ``load`` is the LB's one ``LoadTracker`` (shared with its placer); the pool
    makes its own when none is given.
    """

    def __init__(self, factory: MTLSRunnerFactory, tls: ClientTLS | None = None, *,
                 sources: Sequence[Source] = (), health: HealthConfig | None = None,
                 metrics: Metrics | None = None, load: LoadTracker | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._sources = tuple(sources)
        self.health_config = health if health is not None else HealthConfig()
        self.metrics = metrics if metrics is not None else Metrics()
        self.load = load if load is not None else LoadTracker()
        self._clock = clock
        rng = rng if rng is not None else random.Random()
        self._members = Members(
            factory, tls, load=self.load, metrics=self.metrics, clock=clock,
            new_health=lambda: RunnerHealth(self.health_config, clock),
            new_member=self._dress, joined=self._joined)
        self._outliers = OutlierDetector(self.health_config, self.metrics, rng)
        self._prober = Prober(self.health_config, on_status=self._polled,
                              on_silence=self._silent, clock=clock, rng=rng)
        # Runners that list "watch" push their status instead of being polled.
        self.watcher = Watcher(self.health_config, on_status=self._answered,
                               on_lost=self._watch_lost, clock=clock)
        self._snapshot: tuple[Runner, ...] = ()
        # While a poll's outcome is applied, a rebuild waits for the end of the
        # tick (poll_once): one per batch of polls, not one per runner, since a
        # rebuild walks the whole pool (starting 5,000 runners was O(n²)).
        self._applying_poll = False
        self._rebuild_pending = False
        self._listeners: list[Callable[[], None]] = []
        self._started = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next_park = 0.0  # when to look for idle channels next
        self._parkable: dict[type, bool] = {}  # isinstance(Parkable) per runner class
        self.parked = 0  # idle channels closed so far
        self._trimmed_at = 0  # closed channels counted at the last malloc trim
        self._next_trim = 0.0
        for table in self.table_sizes():
            self.metrics.pool_table_entries.labels(table).set_function(
                functools.partial(self._table_size, table))

    @property
    def panic(self) -> bool:
        return self._outliers.panic

    # -- lifecycle --------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Load every source once (a ConfigError stops the LB), then watch and probe.

        ``watch=False`` skips the background loop and Runner/Watch streams:
        tests drive ``poll_once``.
        """
        if self._started:
            return
        self.watcher.enabled = self.watcher.enabled and watch
        for source in self._sources:
            await source.start(self)
        self._started = True
        if watch:
            self._task = asyncio.create_task(self._run(), name="fnlb-pool-health")
        log.info("runner pool started", extra=kv(
            sources=",".join(s.name for s in self._sources) or "none",
            runners=len(self._members), interval_s=self.health_config.interval))

    async def shutdown(self) -> None:
        """Stop sources and probes, close every runner. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for source in self._sources:
            await source.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.watcher.stop()
        self._snapshot = ()
        await self._members.close_all()

    async def __aenter__(self) -> DynamicRunnerPool:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.shutdown()

    # -- what placers read ------------------------------------------------------

    async def runners(self, call: RunnerCall) -> Sequence[Runner]:
        snap = self._snapshot
        if not snap and not len(self._members) and self._members.source_errors:
            # Nothing ever resolved: say why instead of a bare "too busy".
            # Retryable: the next lookup may find runners before the placer gives up.
            raise PoolError("no runners yet: " + "; ".join(self._members.source_errors.values()),
                            retryable=True)
        return snap

    def snapshot(self) -> tuple[Runner, ...]:
        return self._snapshot

    def skip_polls_when(self, predicate: Callable[[Member], bool]) -> None:
        """Do not poll a runner's Status while ``predicate(member)`` holds (e.g. its
        Runner/Watch stream is live); see ``Prober.skip_when``."""
        self._prober.skip_when(predicate)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the offered runners change."""
        self._listeners.append(listener)

    # -- what PooledRunner asks around each attempt ----------------------------------

    def refuse(self, m: Member) -> Attempt | None:
        """A local NACK before the runner is asked, or None to go ahead."""
        if m.retired:
            # Left the pool after this placer took its snapshot: go elsewhere.
            return Attempt(False, RunnerUnreachable(f"runner {m.address} left the pool"))
        skip = self._outliers.slow_start_skip(m)
        if skip is None:
            self._rebuild()  # a ramp ended: recount full-share runners
        elif skip:
            return Attempt(False, PassedOn(f"runner {m.address} is in slow start"))
        return None

    def attempted(self, m: Member, call: RunnerCall, result: Attempt) -> None:
        """What an attempt's outcome tells the pool about the runner."""
        if result.placed:
            m.placed += 1
            if call.model.type == DETACHED:
                m.detached_until = max(m.detached_until,
                                       self._clock() + call.model.timeout + _DETACHED_SLACK_S)
        verdict = attempt_verdict(result)
        if verdict is None or m.retired:
            return
        if not result.placed or (isinstance(result.error, RunnerError) and result.error.lost):
            # It could not be reached, or its connection broke under a call: no
            # new calls until a probe reaches it.
            self._set_down(m, str(result.error), "placement")
        elif m.up is False:
            m.up = True  # the call reached it
            self._rebuild()
        if verdict:
            # Polls may be backing off, but a call just ran: it is up. Back to the
            # usual interval, so an ejected runner (panic) is readmitted soon.
            self._prober.back_to_interval(m)
            m.health.success()
            m.call_ok_at = self._clock()
        else:
            self._failure(m, str(result.error), "placement")

    # -- membership (sources and Admin) -----------------------------------------

    def set_source(self, source: str, addresses: Iterable[str]) -> None:
        if self._members.set_source(source, addresses):
            self._rebuild()

    def source_error(self, source: str, error: str | None) -> None:
        self._members.source_error(source, error)

    def add(self, address: str, *, ttl: float | None = None, source: str | None = None) -> bool:
        """Admin/AddRunner: True when the runner is new to the pool.

        With ``ttl`` the runner stays until ``ttl`` seconds pass without another
        ``add`` (a heartbeat); without, until ``remove``.
        """
        address = parse_address(address, source="address")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        src = source or (REGISTERED if ttl is not None else ADMIN)
        expiry = None if ttl is None else self._clock() + ttl
        was_member = address in self._members
        if self._members.add_source(address, src, expiry):
            self._rebuild()
        if expiry is not None:
            self._wake.set()
        return not was_member

    def remove(self, address: str) -> bool:
        """Admin/RemoveRunner: drop what the Admin API added.

        A runner that a source (static list, file, DNS) names is not removable
        here, as the source would only add it back: drain it, or change the source.
        """
        changed = self._members.remove_admin(address)
        if changed:
            self._rebuild()
        return changed

    async def drain(self, address: str) -> str:
        """Admin/DrainRunner: stop placing on the runner and ask it to drain (its Close RPC).

        Returns "" or why the Close RPC failed (the LB stops placing on it either way).
        """
        m = self._members.get(address)
        if not m.admin_drained:
            m.admin_drained = True
            log.info("draining runner", extra=kv(runner=m.address,
                                                 inflight=self._members.inflight(m)))
            self._rebuild()
        close = getattr(m.runner, "drain", None)
        if close is None:
            return ""
        try:
            await asyncio.wait_for(close(wait=False), self.health_config.timeout * 5)
        except (grpc.aio.AioRpcError, TimeoutError, OSError) as e:
            error = f"drain: {e.details() if isinstance(e, grpc.aio.AioRpcError) else e!r}"
            m.health.last_error = error
            log.warning("runner did not take the drain request", extra=kv(
                runner=m.address, error=error))
            return error
        return ""

    def views(self) -> list[RunnerView]:
        return self._members.views()

    def table_sizes(self) -> dict[str, int]:
        """Entries of every per-runner table the pool and its load tracker keep.

        Members and load reports follow the pool's size; in-flight entries
        the calls running; retiring the runners left with calls still on them.
        """
        members, retiring = self._members.counts()
        inflight, reports, warm = self.load.table_sizes()
        return {"members": members, "retiring": retiring, "inflight": inflight,
                "reports": reports, "warm_index": warm, "learned": self.load.learned_count()}

    def _table_size(self, table: str) -> float:
        return float(self.table_sizes()[table])

    def member_count(self) -> tuple[int, int]:
        """(members, retiring): for tests and debugging."""
        return self._members.counts()

    async def closes_done(self) -> None:
        """Wait until the channels of retired runners that were due to close are closed."""
        await self._members.closes_done()

    # -- wiring of the parts ------------------------------------------------------------

    def _dress(self, m: Member) -> None:
        m.handle = PooledRunner(m, self)
        if hasattr(m.runner, "on_unanswered"):
            # A try unanswered past --accept-timeout: suspect at once, and ask.
            m.runner.on_unanswered = lambda reason: self._unanswered(m, reason)
        if hasattr(m.runner, "on_free"):
            # Free slots piggybacked on replies keep the load view fresh without polls.
            m.runner.on_free = lambda slots, memory: self.load.update_free(m.address, slots,
                                                                           memory)

    def _unanswered(self, m: Member, reason: str) -> None:
        if not m.retired:
            self._set_down(m, reason, "accept deadline")
            self._prober.soon(m)
            self._wake.set()

    def _joined(self, m: Member) -> None:
        if self._started:
            # Joining a running pool: ramp up like a readmitted runner.
            m.health.start_ramp()
        self._prober.soon(m)
        self._wake.set()

    def _rebuild(self) -> None:
        if self._applying_poll:
            self._rebuild_pending = True
            return
        self._rebuild_pending = False
        self._snapshot = tuple(m.handle for m in self._outliers.offered(self._members))
        self._members.set_gauges()
        for listener in self._listeners:
            listener()

    def _failure(self, m: Member, error: str, seen_by: str, *, count: int = 1) -> None:
        if self._outliers.failure(m, self._members, error, seen_by, count=count):
            self._prober.at_readmission(m)
            self._rebuild()
            self._wake.set()

    def _silent(self, m: Member, error: str) -> None:
        self._applying_poll = True
        try:
            self._set_down(m, error, "probe")
            self._failure(m, error, "probe")
        finally:
            self._applying_poll = False

    def _set_down(self, m: Member, error: str, seen_by: str) -> None:
        """Unreachable: no new calls until a probe reaches it (while others are up)."""
        if m.up is not False:
            m.up = False
            log.warning("runner unreachable: no new calls until a probe reaches it",
                        extra=kv(runner=m.address, seen_by=seen_by, error=error))
            self._rebuild()

    def _polled(self, m: Member, status: RunnerStatus) -> None:
        self._applying_poll = True
        try:
            self._answered(m, status)
        finally:
            self._applying_poll = False
        self.watcher.offered(m, status)  # lists "watch": stop polling, listen

    def _watch_lost(self, m: Member, error: str) -> None:
        # The fastest "runner gone" signal: no new calls until a probe reaches it.
        self._set_down(m, error, "watch")
        self._prober.soon(m)
        self._wake.set()

    def _answered(self, m: Member, status: RunnerStatus,
                  fresh_for: float | None = None) -> None:
        m.status = status
        m.status_at = now_rfc3339()
        # An answer turns "unknown" or "suspect" into "healthy" (and offered).
        changed = m.up is not True
        m.up = True
        # Received just now, on the tracker's own clock (ours may be a test's).
        self.load.update_reported(m.address, status, fresh_for=fresh_for)
        draining = status.draining or status.drained
        if draining != m.reported_draining:
            m.reported_draining = draining
            changed = True
            log.info("runner reports draining" if draining else "runner no longer draining",
                     extra=kv(runner=m.address))
        if status.is_network_disabled or status.failed:
            why = "network disabled" if status.is_network_disabled else (
                status.error_str or "runner reports failed")
            # The runner says it cannot serve: no need to wait for more failures.
            self._failure(m, f"status: {why}", "probe", count=self.health_config.eject_after)
        else:
            m.health.success()
            changed |= self._outliers.readmit_if_due(m)
        if changed:
            self._rebuild()

    # -- the background loop ------------------------------------------------------------

    async def poll_once(self) -> float:
        """Expire TTLs, close idle removed runners, probe those due; seconds to the next."""
        if self._members.expire(self._clock()):
            self._rebuild()
        self._members.close_idle()
        await self._park_idle()
        await self._trim_if_closed()
        next_probe = await self._prober.poll(list(self._members))
        if self._rebuild_pending:  # what this tick's polls changed, offered at once
            self._rebuild()
        now = self._clock()
        wake = min(next_probe, now + self.health_config.interval)
        expiry = self._members.next_expiry(now)
        if expiry is not None:
            wake = min(wake, expiry)
        if self.health_config.idle_close:
            wake = min(wake, self._next_park)  # look for idle channels in time
        return max(wake - now, 0.0)

    async def _park_idle(self) -> None:
        """Close the channels of runners that ran no call for ``idle_close`` (every idle/4)."""
        idle = self.health_config.idle_close
        now = self._clock()
        if not idle or now < self._next_park:
            return
        self._next_park = now + max(idle / 4, 0.25)
        mono = time.monotonic()  # the runners' own clock, not a test's
        closed = 0
        for m in list(self._members):
            if m.status is None:
                continue  # never heard from yet: its first polls need the channel
            kind = type(m.runner)
            parkable = self._parkable.get(kind)
            if parkable is None:  # a protocol isinstance is slow: once per class
                parkable = self._parkable[kind] = isinstance(m.runner, Parkable)
            if not parkable:
                continue
            runner = cast(Parkable, m.runner)
            if (runner.parked or runner.idle_for(mono) < idle
                    or self.load.inflight(m.address)):
                continue
            try:
                if (m.watch is not None and m.watch.task is not None
                        and runner.may_park(mono, idle)):
                    await self.watcher.release(m)  # its stream needs the channel
                closed += await runner.park_if_idle(mono, idle)
            except Exception as e:  # closing is best effort; polls must go on
                log.warning("closing idle channel failed", extra=kv(runner=m.address,
                                                                    error=repr(e)))
        if closed:
            self.parked += closed
            log.info("closed idle runner channels", extra=kv(
                channels=closed, idle_s=f"{idle:g}"))

    async def _trim_if_closed(self) -> None:
        """Give freed channel memory back once channels were closed (parked or retired)."""
        closed = self.parked + self._members.closed_channels
        now = self._clock()
        if closed > self._trimmed_at and now >= self._next_trim:
            self._trimmed_at = closed
            self._next_trim = now + _TRIM_EVERY_S  # a trim walks the heap: not every tick
            await asyncio.to_thread(_release_freed_memory)

    async def _run(self) -> None:
        while True:
            # Cleared before the tick: a change made during it wakes the next one.
            self._wake.clear()
            try:
                delay = await self.poll_once()
            except Exception:  # a bug must not stop health checking for good
                log.exception("runner pool tick failed")
                delay = self.health_config.interval
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancel that comes as the wake-up does, and shutdown would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
