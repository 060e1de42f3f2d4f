"""The LB agent: submit -> place -> end-of-call accounting (fn's lb_agent.go)."""

from __future__ import annotations

import asyncio
import logging
import time

from fnlb.calls import LBCall
from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    FnlbError,
    ServerTooBusy,
)
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.placers.queue import QueueFull
from fnlb.placers.tracker import DEADLINE_SLACK
from fnlb.runnerpool import Placer, Runner, RunnerPool

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """Places calls with a placer on a pool and accounts for how each call ended."""

    def __init__(self, pool: RunnerPool, placer: Placer, metrics: Metrics) -> None:
        self.pool = pool
        self.placer = placer
        self.metrics = metrics

    async def submit(self, call: LBCall, deadline: float | None = None) -> Runner:
        """Run ``call`` on some runner; return the runner that ran it.

        ``deadline`` is the client's deadline on the time.monotonic clock.
        Raises an FnlbError for every expected failure (docs/design.md §7).
        """
        m = self.metrics
        (m.calls_by_type.get(call.model.type) or m.calls.labels(call.model.type)).inc()
        m.calls_inflight.inc()
        call_status = "errors"
        runner_addr = ""
        try:
            runner = await self.placer.place_call(self.pool, call, deadline)
            runner_addr = runner.address
            call_status = "completed"
            return runner
        except (ServerTooBusy, QueueFull):
            # Too busy to place, shed by the full queue, or stopped before placing.
            call_status = "server_busy"
            raise
        except ClientTimeout:
            call_status = "timeouts"
            raise
        except ClientCanceled:
            # A try whose stream was cancelled at (or after) the client's deadline
            # ended by the deadline, as the client saw it: DEADLINE_EXCEEDED.
            call_status = "timeouts" if self._expired(deadline) else "canceled"
            raise
        except asyncio.CancelledError:
            # gRPC cancels the handler both on a client cancel and at the deadline.
            call_status = "timeouts" if self._expired(deadline) else "canceled"
            raise
        except FnlbError as e:
            runner_addr = getattr(e, "runner", "")
            raise
        finally:
            m.calls_inflight.dec()
            self._end_of_call(call, call_status, runner_addr)

    @staticmethod
    def _expired(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK

    def _end_of_call(self, call: LBCall, call_status: str, runner: str) -> None:
        call.timings.ended(call_status, runner)
        m = self.metrics
        m.calls_completed_by[call_status].inc()
        latency = time.monotonic() - call.started_mono
        user = call.user_execution_time
        if user is not None:
            if user >= latency:
                # Clocks or reports are off: a negative LB overhead would only
                # corrupt the histogram.
                m.suspicious_latency.inc()
                log.warning("dropping suspicious latency sample",
                            extra=kv(call_id=call.model.id, latency_s=f"{latency:.6f}",
                                     user_execution_s=f"{user:.6f}", runner=runner))
                return
            latency -= user
        m.call_latency_by[call_status].observe(latency)
        if log.isEnabledFor(logging.DEBUG):  # the fields cost more than the call
            log.debug("call ended", extra=kv(call_id=call.model.id, fn_id=call.model.fn_id,
                                             status=call_status, runner=runner,
                                             attempts=call.attempts,
                                             lb_latency_ms=f"{latency * 1000:.3f}"))
