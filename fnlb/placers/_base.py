"""The placement loop shared by every placer (fn's PlaceCall shape)."""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Sequence

from fnlb.errors import PoolError
from fnlb.metrics import Metrics
from fnlb.placers.load import LoadTracker
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
    """

    name = "base"

    def __init__(self, config: PlacerConfig | None = None, metrics: Metrics | None = None,
                 load: LoadTracker | None = None) -> None:
        self._config = config if config is not None else PlacerConfig()
        self._metrics = metrics if metrics is not None else Metrics()
        self._load = load if load is not None else LoadTracker()

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

    async def place_call(self, pool: RunnerPool, call: RunnerCall,
                         deadline: float | None = None) -> Runner:
        tracker = PlacerTracker(self._config, call, self._metrics, deadline)
        try:
            while True:
                pool_err: PoolError | None = None
                try:
                    runners: Sequence[Runner] = await pool.runners(call)
                    tracker.pool_error = None
                except PoolError as e:
                    runners, pool_err = (), e
                    tracker.handle_find_runners_failure(e)
                for runner in self.order(runners, call):
                    if tracker.is_done():
                        break
                    address = runner.address
                    self._load.started(address)
                    try:
                        placed, err = await tracker.try_runner(runner, call)
                    finally:
                        self._load.finished(address)
                    if placed:
                        if err is not None:
                            raise err
                        return runner
                if not await tracker.retry_all_backoff(len(runners), pool_err):
                    break
            raise tracker.final_error()
        finally:
            tracker.handle_done()
