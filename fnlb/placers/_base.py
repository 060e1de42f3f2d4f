"""The placement loop shared by every placer (fn's PlaceCall shape)."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from fnlb.errors import (
    DoesNotFit,
    InvalidRequest,
    PassedOn,
    PoolError,
    RunnerError,
    ServerTooBusy,
)
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.placers.capacity import Capacity
from fnlb.placers.load import LoadTracker
from fnlb.placers.queue import Grant
from fnlb.placers.retry import RetryBudget
from fnlb.placers.tracker import PlacerTracker
from fnlb.runnerpool import PlacerConfig, Runner, RunnerCall, RunnerPool

__all__ = ["BasePlacer"]

log = logging.getLogger(__name__)


class BasePlacer(abc.ABC):
    """Walk the pool's runners in ``order()``; retry the whole list until placed or done.

    Subclasses only decide the order (and may observe attempts); the commit rule,
    back-off, deadlines and metrics are the same for all, as in fn.

    Every attempt is counted in ``load`` (a ``LoadTracker``) while ``try_exec``
    runs, so load-aware orders see this LB's calls exactly. For a sync call that
    is the whole call; a detached call leaves the count once the runner accepted it.

    With ``capacity`` (the default in ``fnlb serve``; ``--queue off`` leaves it
    out), a call that finds every runner believed full, or others already
    waiting, waits in the queue for a turn instead of sweeping the list every
    ``retry_all_delay``; runners that refused lately are passed over until
    their NACK mark runs out. Runners of unknown capacity keep fn's sweep.
    """

    name = "base"

    def __init__(self, config: PlacerConfig | None = None, metrics: Metrics | None = None,
                 load: LoadTracker | None = None, *, capacity: Capacity | None = None,
                 idempotent_retries: int = 0, budget: RetryBudget | None = None) -> None:
        self._config = config if config is not None else PlacerConfig()
        self._metrics = metrics if metrics is not None else Metrics()
        self._load = load if load is not None else LoadTracker()
        if capacity is not None and capacity.load is not self._load:
            raise ValueError("capacity must read the placer's own LoadTracker")
        self._capacity = capacity
        self._idempotent_retries = idempotent_retries
        self._budget = budget if budget is not None else RetryBudget()

    @property
    def config(self) -> PlacerConfig:
        return self._config

    @property
    def load(self) -> LoadTracker:
        """The load signal this placer reads and feeds (merge runner reports into it)."""
        return self._load

    @abc.abstractmethod
    def order(self, runners: Sequence[Runner], call: RunnerCall) -> Iterable[Runner]:
        """The runners to try for ``call``, best first (each at most once per round)."""

    def _may_rerun(self, call: RunnerCall, err: BaseException, reruns: int) -> bool:
        """Run a committed call again elsewhere? Only an idempotent one whose runner
        was lost before any of its response arrived, within the limits."""
        if not (isinstance(err, RunnerError) and err.lost):
            return False
        allowed = self._budget.failed()  # every lost call counts, retried or not
        # Part of the answer already out: a second run would mix two answers.
        started = bool(getattr(call.response, "started", False))
        return (allowed and call.model.idempotent and reruns < self._idempotent_retries
                and not started)

    async def place_call(self, pool: RunnerPool, call: RunnerCall,
                         deadline: float | None = None) -> Runner:
        tracker = PlacerTracker(self._config, call, self._metrics, deadline)
        cap = self._capacity
        turn: Grant | None = None  # our place in the wait queue, once given
        unfit: dict[str, int | None] = {}  # runners that said the call can never fit
        reruns = 0  # an idempotent call run again after its runner was lost
        try:
            while True:
                pool_err: PoolError | None = None
                try:
                    runners: Sequence[Runner] = await pool.runners(call)
                    tracker.pool_error = None
                except PoolError as e:
                    runners, pool_err = (), e
                    tracker.handle_find_runners_failure(e)
                memory = call.model.memory
                fitting = [r for r in runners if r.address not in unfit
                           and self._load.fits(r.address, memory) is not False]
                if runners and not fitting:
                    largest = max(max(self._load.memory_mb(r.address),
                                      unfit.get(r.address) or 0) for r in runners)
                    raise InvalidRequest(
                        f"memory_mb: {memory} MiB is more than any runner has (largest: "
                        f"{largest} MiB)")
                if len(fitting) < len(runners):
                    # Only some runners can ever run it: skip the others. Such a call
                    # keeps the sweep (over the runners that fit): in the queue it
                    # would take turns that slots it cannot use freed.
                    runners, queue = fitting, None
                else:
                    queue = cap
                if queue is not None and runners and (
                        queue.must_wait(runners) if turn is None else queue.full(runners)):
                    waiting = time.monotonic()
                    try:
                        turn = await queue.wait(call.model.app_id, tracker.time_left(), turn)
                    except TimeoutError:
                        turn = None  # the wait ended with its deadline; so does the call
                    finally:
                        call.timings.queued(time.monotonic() - waiting)
                    if tracker.is_done():
                        break
                    continue
                for runner in self.order(runners, call):
                    if tracker.is_done():
                        break
                    address = runner.address
                    if cap is not None and cap.room(address) is False:
                        continue  # believed full: no attempt that would only be refused
                    self._load.started(address)
                    tried = time.monotonic()
                    try:
                        placed, err = await tracker.try_runner(runner, call)
                    finally:
                        self._load.finished(address)
                    call.timings.attempted(address, placed, err, tried)
                    if placed:
                        if err is None:
                            self._budget.succeeded()
                            return runner
                        if not self._may_rerun(call, err, reruns):
                            raise err
                        reruns += 1
                        self._metrics.idempotent_retries.inc()
                        log.warning("runner lost an idempotent call: running it again elsewhere",
                                    extra=kv(call_id=call.model.id, runner=address,
                                             rerun=reruns, error=str(err)))
                        continue
                    if isinstance(err, DoesNotFit):
                        unfit[address] = err.memory_mb_total
                        continue
                    if (cap is not None and isinstance(err, ServerTooBusy)
                            and not isinstance(err, PassedOn)):
                        cap.nacked(address)  # the runner itself refused: our view was wrong
                if queue is not None and runners and queue.full(runners) and not tracker.is_done():
                    continue  # every runner refused and is marked: wait for a turn
                if not await tracker.retry_all_backoff(len(runners), pool_err):
                    break
            raise tracker.final_error()
        except asyncio.CancelledError:
            tracker.cancelled_outside_attempt()
            raise
        finally:
            if turn is not None:
                turn.done()
                if cap is not None:
                    cap.kick()  # a turn that ended unused (deadline, cancel) goes on
            tracker.handle_done()
