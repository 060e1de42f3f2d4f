"""The access log: one logfmt line per call at info, on logger ``fnlb.access``.

    ts=... level=info logger=fnlb.access msg=call call_id=9f0c... fn_id=hello app_id=shop
    type=sync status=completed grpc_code=OK runner=127.0.0.1:9190 attempts=2 queue_ms=0.0
    total_ms=4.1 exec_ms=2.2 bytes_in=5 bytes_out=5

Under load the lines are rate-limited (``--access-log-rate`` lines per second,
a burst of one second's worth): the ones left out are counted in
``fnlb_access_log_suppressed_total`` and summed up in one line per
``summary_every`` seconds while it lasts, ``msg="access log: N lines suppressed"``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from fnlb.logs import kv

__all__ = ["AccessLog"]

log = logging.getLogger(__name__)


class AccessLog:
    """Writes the access lines, at most ``rate`` per second (0: no limit).

    ``admit()`` says whether the next line may go out (and counts it when it
    may not); ``write`` writes it. The two steps let a caller skip building
    a line that would be left out.
    """

    def __init__(self, *, enabled: bool = True, rate: float = 0.0,
                 suppressed: Counter | None = None, summary_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.enabled = enabled
        self._rate = rate
        self._counter = suppressed
        self._every = summary_every
        self._clock = clock
        self._log = logger
        self._tokens = rate  # a full bucket: one second's burst
        self._refilled = clock()
        self.suppressed = 0  # left out since the last summary line
        self._summary: asyncio.TimerHandle | None = None

    def admit(self) -> bool:
        """True if a line may be written now; False counts it as suppressed."""
        if not self.enabled:
            return False
        rate = self._rate
        if not rate:
            return True
        now = self._clock()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        if self._counter is not None:
            self._counter.inc()
        if self._summary is None:
            self._summary = asyncio.get_running_loop().call_later(self._every, self.summarize)
        return False

    def write(self, **fields: Any) -> None:
        logger = self._log
        if logger.isEnabledFor(logging.INFO):
            # The record made directly: Logger.info would also walk the stack for
            # the caller's file and line, which no logfmt line shows (a third of
            # the line's cost, at one line per call).
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "call",
                                            (), None, extra=kv(**fields)))

    def summarize(self) -> None:
        """Write the "N lines suppressed" line now, if any were (the timer calls this)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        n, self.suppressed = self.suppressed, 0
        if n:
            self._log.info(f"access log: {n} lines suppressed",
                           extra=kv(suppressed=n, rate=f"{self._rate:g}"))
