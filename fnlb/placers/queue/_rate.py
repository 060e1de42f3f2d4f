"""How fast the queue hands out turns, and what that means for a call it sheds.

A new wait beyond a bound is refused at once (``QueueFull``) with
``pushback_ms``: how long the waiters ahead would take to drain at the recent
grant rate (an exponentially weighted rate over ``RATE_WINDOW_S``; for the
per-app bound, the app's fair share of it), clamped to
``[PUSHBACK_MIN_MS, PUSHBACK_MAX_MS]``, ``PUSHBACK_DEFAULT_MS`` before any grant.
"""

from __future__ import annotations

import math

__all__ = ["GrantRate", "PUSHBACK_DEFAULT_MS", "PUSHBACK_MAX_MS", "PUSHBACK_MIN_MS",
           "RATE_WINDOW_S", "drain_time_ms"]

RATE_WINDOW_S = 5.0
# The rate estimate divides by at least this much observed time, so the first
# grants after a quiet spell do not read as an enormous rate.
_RATE_MIN_SPAN_S = 1.0
PUSHBACK_DEFAULT_MS = 1000
PUSHBACK_MIN_MS = 10
PUSHBACK_MAX_MS = 30_000


class GrantRate:
    """Grants per second, exponentially weighted over about ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self._tau = window
        self._sum = 0.0
        self._at = 0.0
        self._since: float | None = None

    def add(self, now: float, k: int) -> None:
        if self._since is None:
            self._since = now
        else:
            self._sum *= math.exp(-(now - self._at) / self._tau)
        self._sum += k
        self._at = now

    def per_second(self, now: float) -> float | None:
        if self._since is None:
            return None
        decayed = self._sum * math.exp(-max(0.0, now - self._at) / self._tau)
        # Normalise by the weight of the time observed so far, so the estimate
        # is unbiased before a whole window has passed.
        span = self._tau * (1.0 - math.exp(-max(0.0, now - self._since) / self._tau))
        return decayed / max(span, _RATE_MIN_SPAN_S)


def drain_time_ms(rate: float, ahead: int, share: float) -> int:
    """``ahead`` waiters over ``share`` of ``rate`` grants per second, in clamped ms."""
    drain = rate * share
    if drain <= 0:
        return PUSHBACK_MAX_MS
    ms = 1000.0 * ahead / drain
    return int(min(PUSHBACK_MAX_MS, max(PUSHBACK_MIN_MS, ms)))
