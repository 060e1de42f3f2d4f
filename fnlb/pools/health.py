"""Runner health: the policy knobs and one runner's health state machine.

Pure logic with an injected clock, so the rules are unit-tested without
processes; ``fnlb.pools`` drives it from Status probes and from what
placement sees (outlier detection, after Envoy's consecutive-5xx).

One runner moves between these states::

    admitted ──(eject_after failures in a row, if the ejection limit allows)──► ejected
       ▲                                                                         │
       └──(a successful probe once its backoff is over; then slow start)─────────┘

* A **failure** is a Status probe that errors or times out, a probe that says
  ``isNetworkDisabled`` (ejects at once), a connection failure seen by placement,
  or a committed call the runner failed for a platform reason (5xx other than
  503/504, not ``errorUser``). A busy NACK is never a failure: a full runner is
  healthy.
* A **success** (probe answered, call ran, even a function's own error) resets
  the count.
* The **backoff** before readmission starts at ``backoff_base`` and doubles per
  ejection up to ``backoff_max``; it resets after a runner stayed admitted for
  ``backoff_max``.
* **Slow start**: after readmission the runner takes a growing share of the
  attempts offered to it, from ``SLOW_START_MIN_SHARE`` to all of them over
  ``slow_start`` seconds (``share``).
* **Poll back-off**: a runner is polled every ``interval`` while its polls are
  answered, and for ``poll_backoff_after`` seconds after one that answered
  before went silent (a restart or a short partition is found within an
  interval of coming back). Once ``eject_after`` polls in a row got no answer (it is down, not
  just slow once), the gap between polls doubles per further unanswered poll,
  with jitter, up to ``poll_backoff_max`` (``HealthConfig.poll_delay``). Any
  success (a poll answered, a call run) puts it back on ``interval``. A dead
  runner then costs one poll per ~``poll_backoff_max`` instead of one per
  ``interval``; a runner that comes back is seen by the next poll, at most
  ``poll_backoff_max`` later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    ConfigError,
    DoesNotFit,
    RunnerError,
    ServerTooBusy,
)
from fnlb.runnerpool import Attempt

__all__ = ["HealthConfig", "RunnerHealth", "SLOW_START_MIN_SHARE", "attempt_verdict"]

# A ramping runner is never starved entirely: it must serve some calls to warm up.
SLOW_START_MIN_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health checking and outlier detection; times in seconds."""

    interval: float = 2.0
    timeout: float = 1.0
    eject_after: int = 3
    max_ejection_percent: float = 50.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    slow_start: float = 10.0
    # Longest gap between polls of a runner that keeps not answering; <= interval
    # turns the back-off off. 30 s: a dead runner is polled every 15-30 s (jitter)
    # instead of every 2 s, and one that comes back is still found within 30 s
    # with no traffic at all (the readmission backoff tops out at 30 s too).
    poll_backoff_max: float = 30.0
    # A runner that answered before is polled at the usual interval for this
    # long after it went silent (a restart or a short partition is found
    # within an interval), then backs off like one that never answered.
    poll_backoff_after: float = 30.0
    # Status polls per second for the whole pool (--health-poll-rate): a pool
    # of up to interval * poll_rate runners is polled every interval as
    # before; a larger one every pool / poll_rate seconds per runner, spread
    # evenly, skipping runners whose calls ran lately. inf = no budget.
    poll_rate: float = 20.0
    # Close the channel to a runner that ran no call for this long (seconds;
    # --runner-idle-close); the next call re-dials, polls use a one-off
    # channel. 0 = never.
    idle_close: float = 300.0

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigError(f"--health-interval must be > 0, got {self.interval}")
        if not self.timeout > 0:
            raise ConfigError(f"--health-timeout must be > 0, got {self.timeout}")
        if self.eject_after < 1:
            raise ConfigError(f"--eject-after must be >= 1, got {self.eject_after}")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError("--max-ejection-percent must be 0..100, "
                              f"got {self.max_ejection_percent}")
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ConfigError("readmission backoff: need 0 < base <= max, got "
                              f"{self.backoff_base}, {self.backoff_max}")
        if not self.slow_start >= 0:
            raise ConfigError(f"--slow-start must be >= 0, got {self.slow_start}")
        if not self.poll_backoff_after >= 0:
            raise ConfigError(
                f"--health-backoff-after must be >= 0, got {self.poll_backoff_after}")
        if not self.poll_backoff_max > 0:
            raise ConfigError(
                f"--health-backoff-max must be > 0, got {self.poll_backoff_max}")
        if not self.poll_rate > 0:
            raise ConfigError(f"--health-poll-rate must be > 0, got {self.poll_rate}")
        if not self.idle_close >= 0:
            raise ConfigError(f"--runner-idle-close must be >= 0, got {self.idle_close}")

    def poll_period(self, runners: int) -> float:
        """Seconds between two polls of one runner in a pool of ``runners``.

        ``interval`` while the pool fits the budget, then stretched so the
        pool costs ``poll_rate`` polls per second whatever its size::

            >>> cfg = HealthConfig(interval=2, poll_rate=100)
            >>> [cfg.poll_period(n) for n in (10, 200, 1000, 5000)]
            [2.0, 2.0, 10.0, 50.0]
        """
        return float(max(self.interval, runners / self.poll_rate))

    def max_ejected(self, members: int) -> int:
        """How many of ``members`` runners may be ejected at once (50% of 3 -> 1)."""
        return math.floor(members * self.max_ejection_percent / 100 + 1e-9)

    def poll_delay(self, missed: int, jitter: float = 0.0) -> float:
        """Seconds from one Status poll to the next, after ``missed`` unanswered polls in a row.

        ``interval`` until ``eject_after`` polls were missed (so a dead runner is
        still noticed within ``eject_after`` polls), then ``interval * 2**k`` for
        the k-th further miss, capped at ``poll_backoff_max``. ``jitter`` in
        [0, 1) shortens that by up to half, so runners that died together (a
        rack, a restart of everything) do not stay polled in lockstep; never
        below ``interval``, never above the cap::

            >>> cfg = HealthConfig(interval=2, eject_after=3, poll_backoff_max=30)
            >>> [cfg.poll_delay(n) for n in range(8)]
            [2.0, 2.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        """
        if missed < self.eject_after or self.poll_backoff_max <= self.interval:
            return float(self.interval)
        # Exponent clamped: a runner missing polls for months must not overflow.
        k = min(missed - self.eject_after + 1, 64)
        delay = min(self.interval * 2.0 ** k, self.poll_backoff_max)
        return float(max(self.interval, delay * (1.0 - jitter / 2.0)))


def attempt_verdict(result: Attempt) -> bool | None:
    """What a ``try_exec`` outcome says of the runner: True ok, False failure, None nothing."""
    err = result.error
    if not result.placed:
        # A NACK (or "does not fit") proves the runner alive; anything else
        # unplaced is a connection failure.
        return None if isinstance(err, ServerTooBusy | DoesNotFit) else False
    if err is None:
        return True
    if isinstance(err, ClientTimeout | ClientCanceled):
        return None  # the client's doing
    if isinstance(err, RunnerError):
        platform = (not err.user_error and err.error_code >= 500
                    and err.error_code not in (503, 504))
        # A function's own error (or its timeout) still shows a working runner.
        return not platform
    return False


class RunnerHealth:
    """Consecutive failures, ejection and readmission of one runner."""

    __slots__ = ("_cfg", "_clock", "failures", "ejected_until", "ejections",
                 "admitted_at", "ramp_from", "last_error", "missed_polls", "answered_at",
                 "silent_since")

    def __init__(self, config: HealthConfig, clock: Callable[[], float]) -> None:
        self._cfg = config
        self._clock = clock
        self.failures = 0
        self.ejected_until: float | None = None  # None: admitted
        self.ejections = 0  # in a row, for the backoff
        self.admitted_at = clock()
        self.ramp_from: float | None = None  # slow start began here (None: full share)
        self.last_error = ""
        # Status polls in a row that got no answer (error, timeout), whatever the
        # runner's state: drives the poll back-off, not ejection.
        self.missed_polls = 0
        self.answered_at: float | None = None  # last answered poll or run call
        self.silent_since: float | None = None  # first unanswered poll of this run

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    def success(self) -> None:
        """A poll answered or a call run: the runner is up."""
        self.failures = 0
        self.poll_answered()

    def poll_missed(self) -> None:
        if not self.missed_polls:
            self.silent_since = self._clock()
        self.missed_polls += 1

    def poll_answered(self) -> None:
        """Answered, whatever it said (even "failed"): it is reachable, poll it as usual."""
        self.missed_polls = 0
        self.silent_since = None
        self.answered_at = self._clock()

    def polls_missed_for_backoff(self) -> int:
        """The missed polls that count toward the poll back-off.

        A runner that answered before and went silent less than
        ``poll_backoff_after`` ago (a restart, a short partition) is polled at
        the usual interval, so it is found again within an interval of
        coming back; one that never answered, or stays silent longer, backs off.
        """
        if (self.answered_at is not None and self.silent_since is not None
                and self._clock() - self.silent_since < self._cfg.poll_backoff_after):
            return 0
        return self.missed_polls

    def failure(self, error: str, *, count: int = 1) -> bool:
        """Record a failure; True when the runner has now failed ``eject_after`` in a row."""
        self.last_error = error
        if self.ejected:
            return False  # already out; late results from stale snapshots change nothing
        self.failures += count
        return self.failures >= self._cfg.eject_after

    def eject(self) -> float:
        """Take the runner out; returns the backoff (s) before it may come back."""
        now = self._clock()
        if now - self.admitted_at >= self._cfg.backoff_max:
            self.ejections = 0  # it behaved for a long while: start the backoff afresh
        backoff = min(self._cfg.backoff_base * 2.0 ** self.ejections, self._cfg.backoff_max)
        self.ejections += 1
        self.ejected_until = now + backoff
        self.ramp_from = None
        return backoff

    def may_readmit(self) -> bool:
        return self.ejected_until is not None and self._clock() >= self.ejected_until

    def readmit(self, *, slow_start: bool = True) -> None:
        now = self._clock()
        self.ejected_until = None
        self.failures = 0
        self.admitted_at = now
        self.ramp_from = now if slow_start and self._cfg.slow_start > 0 else None

    def start_ramp(self) -> None:
        """A runner that joined a running pool ramps up like a readmitted one."""
        if self._cfg.slow_start > 0:
            self.ramp_from = self._clock()

    def share(self) -> float:
        """Fraction of offered attempts the runner should take now (slow start)."""
        if self.ramp_from is None:
            return 1.0
        progress = (self._clock() - self.ramp_from) / self._cfg.slow_start
        if progress >= 1.0:
            self.ramp_from = None
            return 1.0
        return max(SLOW_START_MIN_SHARE, float(progress))
