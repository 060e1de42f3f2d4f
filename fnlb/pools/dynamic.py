"""A runner pool whose membership changes: sources, health checks, draining.

Sources (``StaticSource``, ``FileSource``, ``DnsSource``) and the Admin service
(``add``/``remove``/``drain``) feed addresses; a runner is a member while at
least one source names it (a registration with a TTL names it until it expires).

Per runner there is exactly one ``_Member``: the ``Runner`` the factory built
(one channel), its health, counters and the ``PooledRunner`` handed to
placers. It is made when the address first appears and torn down when the last
source lets go: it stops being offered at once, its in-flight calls finish, and
only then is its channel closed and the load tracker told to forget it. An
address that comes back before that reuses the same member.

Placers read ``runners()``: an immutable tuple rebuilt only when membership or
a runner's state changes, so a change mid-placement cannot disturb a call that
is walking an older tuple. The tuple is sorted by address, so every LB replica
orders the same runners the same way (consistent hashing agrees across LBs).

What is offered (``docs/pools.md`` has the why):

* healthy and never-probed runners; not ejected or draining ones;
* **panic**: when every non-draining runner is ejected, all of them are offered
  (Envoy's panic threshold) rather than failing every call;
* **slow start**: a readmitted runner (or one that joined a running pool) is in
  the tuple at its usual place, but for ``--slow-start`` seconds its
  ``PooledRunner`` passes a shrinking share of attempts on to the next runner
  with a local busy NACK, so hash-based placers keep their mapping and every
  placer sees the ramp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import grpc

from fnlb.errors import FnlbError, PoolError, RunnerUnreachable, ServerTooBusy
from fnlb.health import HealthConfig, RunnerHealth, attempt_verdict
from fnlb.logs import kv
from fnlb.metrics import POOL_STATES, Metrics
from fnlb.pools._address import parse_address
from fnlb.pools._source import Source
from fnlb.runnerpool import (
    DETACHED,
    Attempt,
    MTLSRunnerFactory,
    Refreshable,
    Runner,
    RunnerCall,
    RunnerStatus,
)
from fnlb.timefmt import now_rfc3339

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

__all__ = [
    "ADMIN",
    "REGISTERED",
    "DynamicRunnerPool",
    "LoadSink",
    "MembershipError",
    "PooledRunner",
    "RunnerView",
    "UnknownRunner",
]

log = logging.getLogger(__name__)

ADMIN = "admin"  # added with Admin/AddRunner, no TTL
REGISTERED = "registered"  # added with a TTL: a runner's own heartbeat
_ADMIN_SOURCES = (ADMIN, REGISTERED)
# How long a detached call's result stream may still be read after acceptance,
# beyond its timeout (GrpcRunner drains it in the background for that long).
_DETACHED_SLACK_S = 30.0


class MembershipError(FnlbError):
    """The change contradicts a source (e.g. removing a runner DNS lists)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnknownRunner(FnlbError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown runner"


class LoadSink(Protocol):
    """The parts of ``fnlb.load.LoadTracker`` the pool feeds."""

    def update_reported(self, address: str, status: RunnerStatus,
                        at: float | None = None) -> None: ...

    def forget(self, address: str) -> None: ...


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


class _Member:
    __slots__ = ("address", "runner", "handle", "sources", "health", "inflight", "placed",
                 "status", "status_at", "probed", "admin_drained", "reported_draining",
                 "retired", "closing", "detached_until", "next_probe", "blocked_logged")

    def __init__(self, address: str, runner: Runner, health: RunnerHealth) -> None:
        self.address = address
        self.runner = runner
        self.handle: PooledRunner
        self.sources: dict[str, float | None] = {}  # source -> expiry (monotonic) or None
        self.health = health
        self.inflight = 0
        self.placed = 0
        self.status: RunnerStatus | None = None
        self.status_at = ""
        self.probed = False
        self.admin_drained = False
        self.reported_draining = False
        self.retired = False
        self.closing = False
        self.detached_until = 0.0
        self.next_probe = 0.0
        self.blocked_logged = False

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
        return "healthy" if self.probed else "unknown"


class PooledRunner:
    """The ``Runner`` placers get: counts in-flight calls and feeds outlier detection."""

    __slots__ = ("_member", "_pool")

    def __init__(self, member: _Member, pool: DynamicRunnerPool) -> None:
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
        m, pool = self._member, self._pool
        if m.retired:
            # Left the pool after this placer took its snapshot: go elsewhere.
            return Attempt(False, RunnerUnreachable(f"runner {m.address} left the pool"))
        if pool._slow_start_skip(m):
            return Attempt(False, ServerTooBusy(f"runner {m.address} is in slow start"))
        m.inflight += 1
        try:
            result = await m.runner.try_exec(call)
        finally:
            m.inflight -= 1
            if m.retired and m.inflight == 0:
                pool._maybe_close(m)
        if result.placed:
            m.placed += 1
            if call.model.type == DETACHED:
                m.detached_until = max(m.detached_until,
                                       pool._clock() + call.model.timeout + _DETACHED_SLACK_S)
        pool._observe(m, result)
        return result

    async def status(self) -> RunnerStatus:
        return await self._member.runner.status()

    async def close(self) -> None:
        """The pool owns the channel; it closes it when the runner leaves."""
        return None


def _ip_order(address: str) -> tuple[int, str]:
    # Deterministic across LB replicas; IPv4 before IPv6 before names.
    return (1 if address.startswith("[") else 0, address)


class DynamicRunnerPool:
    """Membership from sources and the Admin API, with health checking.

    ``async with DynamicRunnerPool(factory, sources=[StaticSource([...])]) as pool:``
    """

    def __init__(self, factory: MTLSRunnerFactory, tls: ClientTLS | None = None, *,
                 sources: Sequence[Source] = (), health: HealthConfig | None = None,
                 metrics: Metrics | None = None, load: LoadSink | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._factory = factory
        self._tls = tls
        self._sources = tuple(sources)
        self.health_config = health if health is not None else HealthConfig()
        self.metrics = metrics if metrics is not None else Metrics()
        self._load = load
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._members: dict[str, _Member] = {}
        self._retiring: dict[str, _Member] = {}
        self._source_errors: dict[str, str] = {}
        self._snapshot: tuple[PooledRunner, ...] = ()
        self._offered_full: int = 0  # offered runners not in slow start (see _rebuild)
        self.panic = False
        self._started = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Load every source once (a ConfigError stops the LB), then watch and probe.

        ``watch=False`` skips the background loop: tests drive ``poll_once``.
        """
        if self._started:
            return
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
        members = [*self._members.values(), *self._retiring.values()]
        self._members.clear()
        self._retiring.clear()
        self._snapshot = ()
        for m in members:
            m.retired = True
            await self._close_runner(m)
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def __aenter__(self) -> DynamicRunnerPool:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.shutdown()

    # -- what placers read ------------------------------------------------------

    async def runners(self, call: RunnerCall) -> Sequence[Runner]:
        snap = self._snapshot
        if not snap and not self._members and self._source_errors:
            # Nothing ever resolved: say why instead of a bare "too busy".
            # Retryable: the next lookup may find runners before the placer gives up.
            raise PoolError("no runners yet: " + "; ".join(self._source_errors.values()),
                            retryable=True)
        return snap

    def snapshot(self) -> tuple[PooledRunner, ...]:
        return self._snapshot

    # -- membership (sources and Admin) -----------------------------------------

    def set_source(self, source: str, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        changed = False
        for m in [m for m in self._members.values() if source in m.sources]:
            if m.address not in wanted:
                changed |= self._drop_source(m, source)
        for address in wanted:
            changed |= self._add_source(address, source, None)
        if changed:
            self._rebuild()

    def source_error(self, source: str, error: str | None) -> None:
        if error is None:
            self._source_errors.pop(source, None)
        else:
            if source not in self._source_errors or self._source_errors[source] != error:
                self.metrics.discovery_errors.labels(source).inc()
            self._source_errors[source] = error

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
        if self._add_source(address, src, expiry):
            self._rebuild()
        if expiry is not None:
            self._wake.set()
        return not was_member

    def remove(self, address: str) -> bool:
        """Admin/RemoveRunner: drop what the Admin API added.

        A runner that a source (static list, file, DNS) names is not removable
        here, as the source would only add it back: drain it, or change the source.
        """
        m = self._member(address)
        address = m.address
        others = sorted(s for s in m.sources if s not in _ADMIN_SOURCES)
        if others:
            raise MembershipError(
                f"runner {address} comes from {', '.join(others)}: remove it there, "
                "or drain it (Admin/DrainRunner)")
        changed = False
        for src in _ADMIN_SOURCES:
            if src in m.sources:
                changed |= self._drop_source(m, src)
        if changed:
            self._rebuild()
        return changed

    async def drain(self, address: str) -> str:
        """Admin/DrainRunner: stop placing on the runner and ask it to drain (its Close RPC).

        Returns "" or why the Close RPC failed (the LB stops placing on it either way).
        """
        m = self._member(address)
        address = m.address
        if not m.admin_drained:
            m.admin_drained = True
            log.info("draining runner", extra=kv(runner=address, inflight=m.inflight))
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
                runner=address, error=error))
            return error
        return ""

    def _member(self, address: str) -> _Member:
        """The member at ``address`` (validated); UnknownRunner if there is none."""
        address = parse_address(address, source="address")
        m = self._members.get(address)
        if m is None:
            raise UnknownRunner(f"runner {address} is not in the pool")
        return m

    def views(self) -> list[RunnerView]:
        now = self._clock()
        out = []
        for m in sorted([*self._members.values(), *self._retiring.values()],
                        key=lambda m: _ip_order(m.address)):
            expiry = m.sources.get(REGISTERED)
            ttl = None if expiry is None else expiry - now
            out.append(RunnerView(
                address=m.address, state=m.state(), sources=tuple(sorted(m.sources)),
                inflight=m.inflight, placed=m.placed,
                consecutive_failures=m.health.failures, last_error=m.health.last_error,
                last_status_at=m.status_at, status=m.status,
                ttl_remaining_s=None if ttl is None else max(ttl, 0.0)))
        return out

    def member_count(self) -> tuple[int, int]:
        """(members, retiring): for tests and debugging."""
        return len(self._members), len(self._retiring)

    # -- internals: membership ----------------------------------------------------

    def _add_source(self, address: str, source: str, expiry: float | None) -> bool:
        """Name ``address`` by ``source``; True if membership changed."""
        m = self._members.get(address)
        if m is not None:
            new = source not in m.sources
            m.sources[source] = expiry
            return new
        if self._closed:
            return False
        m = self._retiring.pop(address, None)
        if m is not None and not m.closing:
            # Back before its channel closed: reuse it rather than dial twice.
            m.retired = False
            m.health = RunnerHealth(self.health_config, self._clock)
        else:
            runner = self._factory(address, self._tls)
            m = _Member(address, runner, RunnerHealth(self.health_config, self._clock))
            m.handle = PooledRunner(m, self)
        m.sources[source] = expiry
        if self._started:
            # Joining a running pool: ramp up like a readmitted runner.
            m.health.start_ramp()
        m.next_probe = self._clock()  # probe soon: learn its state and load
        self._members[address] = m
        self._wake.set()
        self.metrics.pool_changes.labels("added").inc()
        fields = kv(runner=address, source=source)
        if expiry is not None:
            fields["kv"]["ttl_s"] = f"{expiry - self._clock():g}"
        log.info("runner added", extra=fields)
        return True

    def _drop_source(self, m: _Member, source: str) -> bool:
        if m.sources.pop(source, "absent") == "absent":
            return False
        if m.sources:
            return False
        self._retire(m)
        return True

    def _retire(self, m: _Member) -> None:
        del self._members[m.address]
        m.retired = True
        self._retiring[m.address] = m
        if self._load is not None:
            self._load.forget(m.address)
        self.metrics.pool_changes.labels("removed").inc()
        log.info("runner removed", extra=kv(runner=m.address, inflight=m.inflight))
        self._maybe_close(m)

    def _maybe_close(self, m: _Member) -> None:
        """Close a removed runner's channel once nothing of ours runs on it."""
        if not m.retired or m.closing or m.inflight or self._clock() < m.detached_until:
            return
        m.closing = True
        task = asyncio.get_running_loop().create_task(self._close_runner(m))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_runner(self, m: _Member) -> None:
        m.closing = True
        try:
            await m.runner.close()
        except Exception as e:  # closing is best effort; never kill the pool for it
            log.warning("closing runner failed", extra=kv(runner=m.address, error=repr(e)))
        finally:
            if self._retiring.get(m.address) is m:
                del self._retiring[m.address]
            self._set_gauges()

    # -- internals: what is offered ---------------------------------------------------

    def _rebuild(self) -> None:
        live = [m for m in self._members.values() if not m.draining]
        offered = [m for m in live if not m.health.ejected]
        panic = bool(live) and not offered
        if panic != self.panic:
            self.panic = panic
            self.metrics.pool_panic.set(1 if panic else 0)
            if panic:
                log.warning("every runner is ejected: offering all of them (panic)",
                            extra=kv(runners=len(live)))
            else:
                log.info("panic over: healthy runners are back", extra=kv(runners=len(offered)))
        chosen = live if panic else offered
        chosen.sort(key=lambda m: _ip_order(m.address))
        self._snapshot = tuple(m.handle for m in chosen)
        # share() ends ramps that are over, so the count is current.
        self._offered_full = sum(1 for m in chosen if m.health.share() >= 1.0)
        self._set_gauges()

    def _set_gauges(self) -> None:
        counts = dict.fromkeys(POOL_STATES, 0)
        for m in self._members.values():
            counts[m.state()] += 1
        counts["retiring"] = len(self._retiring)
        for state, n in counts.items():
            self.metrics.pool_runners.labels(state).set(n)

    def _slow_start_skip(self, m: _Member) -> bool:
        """Should this attempt pass a ramping runner by?"""
        if m.health.ramp_from is None:
            return False
        share = m.health.share()
        if share >= 1.0:
            self._rebuild()  # ramp over: recount full-share runners
            return False
        # Skip only when a full-share runner can take the call instead.
        if self.panic or self._offered_full == 0:
            return False
        if self._rng.random() < share:
            return False
        self.metrics.pool_slow_start_skips.inc()
        return True

    # -- internals: health ----------------------------------------------------------

    def _observe(self, m: _Member, result: Attempt) -> None:
        verdict = attempt_verdict(result)
        if verdict is None or m.retired:
            return
        if verdict:
            if m.health.missed_polls:
                # Polls were backing off, but a call just ran: it is up. Back to
                # the usual interval, so an ejected runner (panic) is readmitted soon.
                m.next_probe = min(m.next_probe, self._clock() + self.health_config.interval)
            m.health.success()
        else:
            self._failure(m, str(result.error), "placement")

    def _failure(self, m: _Member, error: str, seen_by: str, *, count: int = 1) -> None:
        self.metrics.pool_runner_failures.labels(seen_by).inc()
        if m.health.failure(error, count=count):
            self._try_eject(m, seen_by)

    def _try_eject(self, m: _Member, seen_by: str) -> None:
        if m.health.ejected or m.draining:
            return
        live = [x for x in self._members.values() if not x.draining]
        ejected = sum(1 for x in live if x.health.ejected)
        limit = self.health_config.max_ejected(len(live))
        if ejected >= limit:
            self.metrics.pool_ejections_blocked.inc()
            if not m.blocked_logged:
                m.blocked_logged = True
                log.warning("not ejecting failing runner: --max-ejection-percent reached",
                            extra=kv(runner=m.address, ejected=ejected, runners=len(live),
                                     error=m.health.last_error))
            return
        m.blocked_logged = False
        backoff = m.health.eject()
        m.next_probe = min(m.next_probe, m.health.ejected_until or m.next_probe)
        self.metrics.pool_ejections.labels(seen_by).inc()
        log.warning("runner ejected", extra=kv(
            runner=m.address, seen_by=seen_by, failures=m.health.failures,
            backoff_s=f"{backoff:g}", inflight=m.inflight, error=m.health.last_error))
        self._rebuild()
        self._wake.set()

    async def _probe(self, m: _Member) -> None:
        cfg = self.health_config
        try:
            # The explicit step that may re-dial and renegotiate; status() only asks.
            poll = m.runner.refresh() if isinstance(m.runner, Refreshable) else m.runner.status()
            status = await asyncio.wait_for(poll, cfg.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if m.retired:
                return
            if isinstance(e, grpc.aio.AioRpcError):
                error = f"status: {e.code().name}: {e.details()}"
            elif isinstance(e, TimeoutError):
                error = f"status: no answer within {cfg.timeout:g}s"
            else:
                error = f"status: {e!r}"
            m.health.poll_missed()
            self._failure(m, error, "probe")
            return
        if m.retired:
            return
        m.health.poll_answered()
        m.status = status
        m.status_at = now_rfc3339()
        # The first answer turns "unknown" into "healthy": the gauges must say so.
        changed = not m.probed
        m.probed = True
        if self._load is not None:
            # Received just now, on the tracker's own clock (ours may be a test's).
            self._load.update_reported(m.address, status)
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
            self._failure(m, f"status: {why}", "probe", count=cfg.eject_after)
        else:
            m.health.success()
            if m.health.ejected and m.health.may_readmit():
                m.health.readmit()
                changed = True
                self.metrics.pool_readmissions.inc()
                log.info("runner readmitted", extra=kv(
                    runner=m.address, slow_start_s=f"{cfg.slow_start:g}"))
        if changed:
            self._rebuild()

    async def poll_once(self) -> float:
        """Expire TTLs, close idle removed runners, probe those due; seconds to the next."""
        now = self._clock()
        cfg = self.health_config
        changed = False
        # Collected first (no copies per member): this runs every tick over every runner.
        expired = [(m, src) for m in self._members.values()
                   for src, expiry in m.sources.items() if expiry is not None and expiry <= now]
        for m, src in expired:
            log.info("runner registration expired", extra=kv(runner=m.address))
            changed |= self._drop_source(m, src)
        if changed:
            self._rebuild()
        for m in list(self._retiring.values()):
            self._maybe_close(m)
        due = [m for m in self._members.values() if m.next_probe <= now]
        for m in due:
            m.next_probe = now + cfg.interval
        if due:
            await asyncio.gather(*(self._probe(m) for m in due))
        started, now = now, self._clock()
        for m in due:
            if m.health.missed_polls:
                # Not answering: poll it less and less often, up to the cap. Any
                # success resets the count, and with it the interval.
                at = started + cfg.poll_delay(m.health.missed_polls, self._rng.random())
                if at > started + cfg.interval:
                    # Batched onto multiples of the interval (never later than the
                    # back-off says): however many runners are down, their polls
                    # wake this loop at most once per interval, not once each.
                    at = max(started + cfg.interval,
                             math.floor(at / cfg.interval) * cfg.interval)
                m.next_probe = at
            until = m.health.ejected_until
            if until is not None and until > now:
                # Look again as soon as its backoff ends, not a whole interval later.
                m.next_probe = min(m.next_probe, until)
        wake = now + cfg.interval
        for m in self._members.values():
            wake = min(wake, m.next_probe)
            for expiry in m.sources.values():
                if expiry is not None:
                    wake = min(wake, expiry)
        for m in self._retiring.values():
            if m.detached_until > now:
                wake = min(wake, m.detached_until)
        return max(wake - now, 0.0)

    async def _run(self) -> None:
        while True:
            # Cleared before the tick: a change made during it wakes the next one.
            self._wake.clear()
            try:
                delay = await self.poll_once()
            except Exception:  # a bug must not stop health checking for good
                log.exception("runner pool tick failed")
                delay = self.health_config.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
