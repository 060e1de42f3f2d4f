"""The placer loop's bookkeeping, after fn's ``placer_tracker.go``.

Two clocks bound a placement: the client's deadline (or cancel) and the
placer's own timeout. The placer timeout only stops *placement*: an attempt
that a runner committed runs until the client deadline, as in fn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fnlb import tracing
from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    FnlbError,
    PoolError,
    ServerTooBusy,
)
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.runnerpool import DETACHED, Attempt, PlacerConfig, Runner, RunnerCall

__all__ = ["PlacerTracker"]

log = logging.getLogger(__name__)

DEADLINE_SLACK = 0.05


class PlacerTracker:
    """State of one placement: attempts, deadlines, metrics."""

    def __init__(self, config: PlacerConfig, call: RunnerCall, metrics: Metrics,
                 deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = config
        self._call = call
        self._metrics = metrics
        self._clock = clock
        now = clock()
        timeout = (config.detached_placer_timeout if call.model.type == DETACHED
                   else config.placer_timeout)
        self.start = now
        self.placer_deadline = now + timeout
        self.client_deadline = deadline
        self.attempts = 0
        self.placed = False
        self.canceled = False
        self.committed_runner: Runner | None = None
        self.committed_duration = 0.0
        self.pool_error: PoolError | None = None

    # -- fn: IsDone -----------------------------------------------------------
    def client_expired(self, slack: float = 0.0) -> bool:
        return (self.client_deadline is not None
                and self._clock() >= self.client_deadline - slack)

    def placer_expired(self) -> bool:
        return self._clock() >= self.placer_deadline

    def time_left(self) -> float:
        """Seconds until the placer timeout or the client's deadline, whichever is first."""
        end = self.placer_deadline
        if self.client_deadline is not None:
            end = min(end, self.client_deadline)
        return max(0.0, end - self._clock())

    def is_done(self) -> bool:
        return self.canceled or self.client_expired() or self.placer_expired()

    # -- fn: HandleFindRunnersFailure ------------------------------------------
    def handle_find_runners_failure(self, err: PoolError) -> None:
        self.pool_error = err
        self._metrics.pool_errors.inc()
        log.warning("failed to find runners for call",
                    extra=kv(call_id=self._call.model.id, error=str(err),
                             retryable=err.retryable))

    # -- fn: TryRunner ---------------------------------------------------------
    async def try_runner(self, runner: Runner, call: RunnerCall) -> Attempt:
        self.attempts += 1
        call.attempts += 1
        t0 = self._clock()
        try:
            # The client deadline, not the placer timeout, bounds an attempt:
            # a committed call may run longer than the placer would wait.
            async with asyncio.timeout_at(self.client_deadline):
                result = await (tracing.attempt(runner, call) if tracing.enabled
                                else runner.try_exec(call))
        except TimeoutError:
            # fn: the request context ended during TryExec -> placed, with the
            # context's error. The runner saw the stream cancelled.
            result = Attempt(True, ClientTimeout())
        except asyncio.CancelledError:
            # The client's own deadline timer may cancel the RPC a moment before
            # ours fires: a cancel that close to the deadline is the deadline.
            self.canceled = not self.client_expired(DEADLINE_SLACK)
            self.placed = True
            self._metrics.placer_placed_by["abort"].inc()
            self.committed_duration = self._clock() - t0
            raise
        m = self._metrics
        if not result.placed:
            if isinstance(result.error, ServerTooBusy):
                m.placer_retries_by["busy"].inc()
            elif not self.client_expired():
                # Only a retry caused by the runner, not by the client's clock.
                m.placer_retries_by["error"].inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("runner did not take call",
                          extra=kv(call_id=call.model.id, runner=runner.address,
                                   error=str(result.error)))
            return result
        self.placed = True
        self.committed_runner = runner
        self.committed_duration = self._clock() - t0
        if result.error is None:
            m.placer_placed_by["ok"].inc()
        elif isinstance(result.error, ClientTimeout | ClientCanceled):
            m.placer_placed_by["abort"].inc()
        else:
            m.placer_placed_by["error"].inc()
        return result

    # -- fn: RetryAllBackoff ---------------------------------------------------
    async def retry_all_backoff(self, num_runners: int, err: PoolError | None) -> bool:
        """Wait ``retry_all_delay`` before walking the list again; False = give up."""
        if num_runners == 0:
            self._metrics.pool_empty.inc()
            # A pool failure that retrying cannot fix: fail fast with it.
            if err is not None and not err.retryable:
                return False
        now = self._clock()
        wake = min(now + self._cfg.retry_all_delay, self.placer_deadline)
        if self.client_deadline is not None:
            wake = min(wake, self.client_deadline)
        if wake > now:
            await asyncio.sleep(wake - now)
        return not self.is_done()

    def final_error(self) -> FnlbError:
        """Why placement ended without a commit."""
        if self.canceled:
            return ClientCanceled()
        if self.client_expired():
            return ClientTimeout()
        if self.pool_error is not None and (not self.pool_error.retryable or self.attempts == 0):
            return self.pool_error
        return ServerTooBusy()

    def cancelled_outside_attempt(self) -> None:
        """The RPC was cancelled while no attempt ran (queued, between rounds):
        counted as a cancel or, that close to the client's deadline, a timeout."""
        if not self.placed:
            self.canceled = not self.client_expired(DEADLINE_SLACK)

    # -- fn: HandleDone --------------------------------------------------------
    def handle_done(self) -> None:
        m = self._metrics
        if self.canceled:
            m.placer_client_cancels.inc()
        elif self.client_expired(DEADLINE_SLACK):
            m.placer_client_timeouts.inc()
        if not self.placed and self.placer_expired():
            m.placer_timeouts.inc()
        m.placer_attempts.observe(self.attempts)
        elapsed = self._clock() - self.start - (self.committed_duration if self.placed else 0.0)
        m.placer_latency.observe(max(elapsed, 0.0))
