"""The prober: polls runners' Status on a schedule, backing off from the silent ones.

Each member carries its ``next_probe`` time. A runner is polled every
``interval`` while it answers; one that keeps not answering is polled less and
less often (``HealthConfig.poll_delay``), batched onto multiples of the
interval so however many runners are down, their polls wake the loop at most
once per interval. An ejected runner is looked at again as soon as its
readmission back-off ends.

The prober only asks and schedules; what an answer or a silence means (load
reports, draining, ejection) is the pool's business, through ``on_status`` and
``on_silence``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Sequence

import grpc

from fnlb.pools.health import HealthConfig
from fnlb.pools.membership import Member
from fnlb.runnerpool import Refreshable, RunnerStatus

__all__ = ["Prober"]


class Prober:
    def __init__(self, config: HealthConfig, *,
                 on_status: Callable[[Member, RunnerStatus], None],
                 on_silence: Callable[[Member, str], None],
                 clock: Callable[[], float], rng: random.Random) -> None:
        self.config = config
        self._on_status = on_status
        self._on_silence = on_silence
        self._clock = clock
        self._rng = rng

    def soon(self, m: Member) -> None:
        """Probe ``m`` at the next tick (it joined: learn its state and load)."""
        m.next_probe = self._clock()

    def back_to_interval(self, m: Member) -> None:
        """A call just ran on a runner whose polls were backing off: it is up."""
        if m.health.missed_polls:
            m.next_probe = min(m.next_probe, self._clock() + self.config.interval)

    def at_readmission(self, m: Member) -> None:
        """Look at an ejected runner as soon as its back-off ends."""
        until = m.health.ejected_until
        if until is not None:
            m.next_probe = min(m.next_probe, until)

    async def probe(self, m: Member) -> None:
        cfg = self.config
        try:
            status = await asyncio.wait_for(self._ask(m), cfg.timeout)
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
            self._on_silence(m, error)
            return
        if not m.retired:
            m.health.poll_answered()
            self._on_status(m, status)

    def _ask(self, m: Member) -> Awaitable[RunnerStatus]:
        # The explicit step of a probe: a runner that can, re-dials after a
        # certificate change and renegotiates its fast paths; status() only asks.
        runner = m.runner
        return runner.refresh() if isinstance(runner, Refreshable) else runner.status()

    async def poll(self, members: Sequence[Member]) -> float:
        """Probe the members that are due; the earliest next probe time."""
        now = self._clock()
        cfg = self.config
        # Watched runners push their status (fnlb.pools.watch): not polled,
        # unless in doubt (suspect, ejected): readmission is a poll's answer,
        # not a heartbeat that may be half a minute away.
        members = [m for m in members
                   if not m.watched or m.up is not True or m.health.ejected]
        due = [m for m in members if m.next_probe <= now]
        for m in due:
            m.next_probe = now + cfg.interval
        if due:
            await asyncio.gather(*(self.probe(m) for m in due))
        started, now = now, self._clock()
        for m in due:
            missed = m.health.polls_missed_for_backoff()
            if missed:
                # Not answering: poll it less and less often, up to the cap. Any
                # success resets the count, and with it the interval.
                at = started + cfg.poll_delay(missed, self._rng.random())
                if at > started + cfg.interval:
                    # Batched onto multiples of the interval (never later than the
                    # back-off says).
                    at = max(started + cfg.interval,
                             math.floor(at / cfg.interval) * cfg.interval)
                m.next_probe = at
            until = m.health.ejected_until
            if until is not None and until > now:
                # Look again as soon as its backoff ends, not a whole interval later.
                m.next_probe = min(m.next_probe, until)
        return min((m.next_probe for m in members), default=now + cfg.interval)
