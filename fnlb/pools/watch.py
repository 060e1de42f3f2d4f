"""Runners push, the LB listens: one Runner/Watch stream per runner that lists "watch".

The prober polls a runner's Status until an answer lists "watch"
(``offered``); then a Watch stream is opened, and from its first message on
the runner is *watched*: the prober leaves it alone (``Member.watched``) and
every message the runner pushes (on change, coalesced, or as a heartbeat)
lands where a poll's answer would (``on_status``: the LoadTracker's report,
draining, the warm set the ``warm`` placer reads). A watched runner's report
stays fresh for two of its heartbeats plus the health timeout, instead of the
tracker's poll-based ``fresh_for``.

The stream ending is the fastest "runner gone" signal there is: a process
that dies closes its connection, and the stream fails at once. So a stream
that had delivered a status and then ends in any way (an error, silence
past two heartbeats, OK from a runner that stops) calls ``on_lost``: the pool
stops offering the runner and polls it again at once. A poll that answers and
lists "watch" opens the next stream, after a back-off that doubles while
streams keep breaking soon after they opened (``HealthConfig.backoff_base``
to ``backoff_max``). A stream that fails before its first message (e.g. the
runner answers UNIMPLEMENTED) only backs off: the runner was never
unwatched, polls go on. Runners without "watch" (fn's, older stubs) are never
asked and stay polled.

    watcher = Watcher(health, on_status=pool_answered, on_lost=pool_lost, clock=clock)
    watcher.offered(member, status)      # after every answered poll
    await watcher.stop()                 # pool shutdown
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol, runtime_checkable

import grpc

from fnlb.logs import kv
from fnlb.pools.health import HealthConfig
from fnlb.pools.membership import Member
from fnlb.runnerpool import RunnerStatus

__all__ = ["WATCH_FEATURE", "Watchable", "WatchState", "Watcher"]

log = logging.getLogger(__name__)

WATCH_FEATURE = "watch"  # RunnerStatus.features (contract)

# A stream that lived this long before breaking was fine: the back-off restarts.
_STEADY_S = 30.0
# Heartbeat assumed before the runner said its own (the stub's default).
_DEFAULT_HEARTBEAT_S = 30.0
# Asked of runners that do not list "keepalive": without the LB's 1 s pings a
# hung runner with its connection up shows only as a silent stream. Runners
# with "keepalive" keep their own (a hang drops the connection within ~2 s),
# because heartbeats are what an idle watch costs: at 1,000 runners ~4.6% of
# a core every 5 s, ~0.6% every 60 s (README, Large pools).
HEARTBEAT_WITHOUT_KEEPALIVE_S = 5.0


@runtime_checkable
class Watchable(Protocol):
    """A runner that can be watched (``GrpcRunner``)."""

    def watch(self, heartbeat: float = 0.0) -> AsyncGenerator[RunnerStatus, None]: ...


class WatchState:
    """One runner's watch: its stream task, whether it streams, its back-off."""

    __slots__ = ("task", "streaming", "breaks", "retry_at")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.streaming = False  # a status came and the stream is open: no polls
        self.breaks = 0  # streams in a row that ended soon after opening
        self.retry_at = 0.0  # no new stream before this (monotonic)


class Watcher:
    """Opens, reads and closes the Watch streams of a pool's runners.

    ``on_status(member, status, fresh_for)``: a status pushed by the runner;
    ``on_lost(member, why)``: a watched runner's stream ended (it may be gone).
    ``heartbeat``: ask runners that do not list "keepalive" for one at least
    this often (0: theirs); runners with "keepalive" keep theirs.
    """

    def __init__(self, config: HealthConfig, *,
                 on_status: Callable[[Member, RunnerStatus, float], None],
                 on_lost: Callable[[Member, str], None],
                 clock: Callable[[], float] = time.monotonic,
                 heartbeat: float = HEARTBEAT_WITHOUT_KEEPALIVE_S,
                 enabled: bool = True) -> None:
        self.config = config
        self._on_status = on_status
        self._on_lost = on_lost
        self._clock = clock
        self.heartbeat = heartbeat
        self.enabled = enabled
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    def streams(self) -> int:
        """Watch streams running now (open or opening): for tests and debugging."""
        return len(self._tasks)

    # -- what the pool calls -------------------------------------------------------

    def offered(self, m: Member, status: RunnerStatus) -> None:
        """A poll answered: watch the runner if it lists "watch" and nothing stops it."""
        if (not self.enabled or self._stopped or m.retired
                or WATCH_FEATURE not in status.features
                or not isinstance(m.runner, Watchable)
                or getattr(m.runner, "parked", False)):
            return  # (an idle-closed channel: polled within the budget until a call)
        state = m.watch
        if state is None:
            state = m.watch = WatchState()
        elif state.task is not None or self._clock() < state.retry_at:
            return
        self._start(m, state)

    async def release(self, m: Member) -> None:
        """Stop watching ``m`` without doubting it (its channel is about to close
        for being idle): polls take over, and once a call has reopened the
        channel, the next poll that lists "watch" opens a stream again."""
        state = m.watch
        task = None if state is None else state.task
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every stream (pool shutdown). Safe to call twice."""
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one stream ----------------------------------------------------------------

    def _start(self, m: Member, state: WatchState) -> None:
        task = asyncio.get_running_loop().create_task(self._run(m, state),
                                                      name=f"fnlb-watch-{m.address}")
        state.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, m: Member, state: WatchState) -> None:
        cfg = self.config
        runner = m.runner
        assert isinstance(runner, Watchable)
        opened = self._clock()
        why = "the runner ended the Watch stream"
        redialled = False
        keepalive = m.status is not None and "keepalive" in m.status.features
        stream = runner.watch(0.0 if keepalive else self.heartbeat)
        # The first status comes at once, but an LB opening a thousand streams
        # may read it late: polls go on meanwhile, so wait generously rather
        # than give up and open again.
        silence = 2 * HEARTBEAT_WITHOUT_KEEPALIVE_S + cfg.timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(silence):
                        status = await anext(stream)
                except StopAsyncIteration:
                    break
                if m.retired or self._stopped:
                    return
                heartbeat = (status.watch_heartbeat_ms / 1000 if status.watch_heartbeat_ms > 0
                             else _DEFAULT_HEARTBEAT_S)
                silence = 2 * heartbeat + cfg.timeout
                if not state.streaming:
                    state.streaming = True
                    log.info("watching runner: no more status polls", extra=kv(
                        runner=m.address, heartbeat_s=f"{heartbeat:g}"))
                m.health.poll_answered()
                self._on_status(m, status, silence)
                if WATCH_FEATURE not in status.features:
                    why = "the runner no longer lists watch"
                    break
                if _adopt(runner, status):
                    # New channel (keepalive or client certificate changed):
                    # follow it at once, the old one closes when its calls end.
                    redialled = True
                    break
        except asyncio.CancelledError:
            if m.retired or self._stopped:
                return
            raise
        except TimeoutError:
            why = f"Watch stream silent for {silence:g}s"
        except grpc.aio.AioRpcError as e:
            why = f"watch: {e.code().name}: {e.details()}"
        except Exception as e:  # a bug must not leave the runner unwatched and unpolled
            log.exception("watch stream failed", extra=kv(runner=m.address))
            why = f"watch: {e!r}"
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # cancels the RPC if it is still open
            state.task = None
            was_streaming, state.streaming = state.streaming, False
        if m.retired or self._stopped:
            return
        if redialled:
            state.streaming = was_streaming
            self._start(m, state)
            return
        now = self._clock()
        state.breaks = 1 if now - opened >= _STEADY_S else state.breaks + 1
        state.retry_at = now + min(cfg.backoff_base * 2.0 ** (state.breaks - 1), cfg.backoff_max)
        if was_streaming:
            log.warning("watch stream ended: runner may be gone, polling it", extra=kv(
                runner=m.address, error=why))
            self._on_lost(m, why)
        else:
            log.info("watch not opened; polling on", extra=kv(runner=m.address, error=why))


def _adopt(runner: object, status: RunnerStatus) -> bool:
    """What a poll's ``refresh`` does with an answer, for a pushed status: use the fast
    paths it lists, follow keepalive and the client certificate. True if it re-dialled."""
    negotiate = getattr(runner, "negotiate", None)
    if negotiate is not None:
        negotiate(status)
    follow_keepalive = getattr(runner, "follow_keepalive", None)
    follow_tls = getattr(runner, "follow_tls", None)
    redialled = bool(follow_keepalive is not None and follow_keepalive(status))
    return bool(follow_tls is not None and follow_tls()) or redialled
