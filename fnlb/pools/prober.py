"""The prober: polls runners' Status on a schedule, backing off from the silent ones.

Each member carries its ``next_probe`` time. A runner is polled every
``interval`` while it answers; one that keeps not answering is polled less and
less often (``HealthConfig.poll_delay``), batched onto multiples of the
interval so however many runners are down, their polls wake the loop at most
once per interval. An ejected runner is looked at again as soon as its
readmission back-off ends.

**A poll budget** (``HealthConfig.poll_rate``, ``--health-poll-rate``): the
whole pool costs at most ``poll_rate`` Status polls per second. A pool that
fits (``runners <= interval * poll_rate``) is polled every ``interval`` as it
always was. A bigger one is polled every ``runners / poll_rate`` seconds per
runner (``HealthConfig.poll_period``), each runner at its own phase (random
at join) so the polls are spread evenly, and a token bucket holds the rate
even when phases bunch up. Then, too, a runner that ran a call within its
period is not polled: the call's outcome says it is up (``Member.call_ok_at``),
and each ``skip_when`` predicate can pass a runner over (e.g. one whose live
Runner/Watch stream already tells its status). A runner never heard from is
asked whatever the budget (at most ``FIRST_PROBES`` at a time, and on the
usual back-off while it does not answer), so a large pool is healthy soon
after start even when some first polls time out.

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

__all__ = ["Prober", "FIRST_PROBES"]

# Runners never heard from that are asked at once in one tick; more wait for the
# next tick (which comes at once). Hundreds of concurrent first dials time out
# (measured: a fifth of 256 at once, on a busy 2-core machine).
FIRST_PROBES = 64
# Over budget, the pool is scanned for due runners at most this often (seconds).
TICK = 0.5


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
        self._skips: list[Callable[[Member], bool]] = []
        self._tokens = 0.0
        self._refilled: float | None = None
        self._starved = False  # the last choose() held polls back for want of tokens
        self._more_first = False  # ... or left first probes for the next tick
        self.polls = 0  # Status polls sent (first probes included)
        self.skipped = 0  # polls passed over: a call ran lately, or a skip_when said so

    def skip_when(self, predicate: Callable[[Member], bool]) -> None:
        """Pass over a runner due for a poll while ``predicate(member)`` is true.

        For runners whose status reaches the LB another way (a live Runner/Watch
        stream): they are not polled and cost nothing of the budget, whatever
        the pool's size. Asked once per due poll; keep it cheap.
        """
        self._skips.append(predicate)

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

    def _skip(self, m: Member, now: float, period: float, budgeted: bool) -> bool:
        if budgeted and m.up and m.call_ok_at > now - period:
            # A call ran lately: that is the health signal; poll a period after it.
            m.next_probe = m.call_ok_at + period
            return True
        for predicate in self._skips:
            if predicate(m):
                m.next_probe = now + period
                return True
        return False

    def _take_tokens(self, now: float, period: float, n: int) -> int:
        """How many of ``n`` due polls the budget allows now (a token bucket)."""
        cfg = self.config
        # Room for one whole round of a pool that fits: such pools never wait.
        cap = max(1.0, cfg.poll_rate * cfg.interval)
        if self._refilled is None:
            self._tokens = cap
        else:
            self._tokens = min(cap, self._tokens + (now - self._refilled) * cfg.poll_rate)
        self._refilled = now
        take = min(n, int(self._tokens))
        self._tokens -= take
        return take

    def choose(self, members: Sequence[Member], now: float) -> list[Member]:
        """The members to poll now: first probes, then the most overdue the budget allows."""
        cfg = self.config
        period = cfg.poll_period(len(members))
        budgeted = period > cfg.interval
        first: list[Member] = []
        due: list[Member] = []
        more_first = False
        for m in members:
            if m.next_probe > now:
                continue
            if m.status is None:  # never answered: joined, or not up yet
                if len(first) < FIRST_PROBES:
                    first.append(m)
                else:
                    more_first = True
            elif self._skip(m, now, period, budgeted):
                self.skipped += 1
            else:
                due.append(m)
        take = self._take_tokens(now, period, len(due))
        self._starved = take < len(due)
        self._more_first = more_first
        if take < len(due):
            due.sort(key=lambda m: m.next_probe)
            del due[take:]
        for m in first:
            # A random phase within the period: a pool that joined at once is
            # not polled at once ever after.
            m.next_probe = now + (period * self._rng.random() if budgeted else period)
        for m in due:
            m.next_probe = now + period
        return first + due

    async def poll(self, members: Sequence[Member]) -> float:
        """Probe the members that are due (within the budget); the earliest next probe time."""
        now = self._clock()
        cfg = self.config
        # Watched runners push their status (fnlb.pools.watch): not polled,
        # unless in doubt (suspect, ejected): readmission is a poll's answer,
        # not a heartbeat that may be half a minute away.
        members = [m for m in members
                   if not m.watched or m.up is not True or m.health.ejected]
        due = self.choose(members, now)
        if due:
            self.polls += len(due)
            await asyncio.gather(*(self.probe(m) for m in due))
        started, now = now, self._clock()
        period = cfg.poll_period(len(members))
        # Over budget, a runner that answered before and is silent now is asked
        # again after a quarter period at the soonest: a few dozen silent runners
        # on a 2 s interval would take the whole budget from the healthy ones.
        floor = period / 4 if period > cfg.interval else 0.0
        for m in due:
            missed = m.health.polls_missed_for_backoff()
            if missed:
                # Not answering: poll it less and less often, up to the cap. Any
                # success resets the count, and with it the interval.
                at = started + max(cfg.poll_delay(missed, self._rng.random()),
                                   floor if m.status is not None else 0.0)
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
        earliest = min((m.next_probe for m in members), default=now + cfg.interval)
        if cfg.poll_period(len(members)) > cfg.interval:
            # Over budget: tick at most every TICK (each tick scans the pool), and
            # when polls were held back, come back once tokens are there again.
            floor = now + max(TICK, 1.0 / cfg.poll_rate) if self._starved else now + TICK
            if not self._more_first:  # runners never heard from wait for no tick
                earliest = max(earliest, floor)
        return earliest
