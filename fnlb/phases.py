"""Where one call's time went: its phases, its attempts, and the per-call trace trailers.

Every call carries a ``CallTimings`` (``RunnerCall.timings``) that the parts
record into as the call goes: the placer its queue waits and attempts, the
transport the runner's reported durations and the moment the result arrived,
the agent how the call ended. The front door reads the breakdown once, at the
end (``fnlb.front``): the ``fnlb_call_phase_seconds{phase}`` histogram, the
``fnlb_call_overhead_seconds{call_status}`` histogram, the access log and the
``fnlb-attempts`` / ``fnlb-phases`` trailers (docs/design.md, Observability).

The phases do not overlap, so for a completed call they add up to the LB's
time on it, up to the network hops between LB and runner::

    queue + placement + runner_wait + cold_start + image_pull + execution + transfer ~ total
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import NamedTuple

from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    DoesNotFit,
    PassedOn,
    RunnerUnreachable,
    ServerTooBusy,
)

__all__ = [
    "ATTEMPTS_TRAILER",
    "PHASES",
    "PHASES_TRAILER",
    "TRACE_HEADER",
    "AttemptRecord",
    "CallTimings",
    "RunnerPhases",
    "attempt_outcome",
    "format_attempts",
    "format_phases",
    "parse_phases",
    "runner_phases",
    "trace_wanted",
]

# Contract names (docs/design.md, Observability).
PHASES = ("queue", "placement", "runner_wait", "cold_start", "image_pull", "execution",
          "transfer")
TRACE_HEADER = "fnlb-trace"
ATTEMPTS_TRAILER = "fnlb-attempts"
PHASES_TRAILER = "fnlb-phases"

# The trailer keeps the first and the last attempts of a call that swept
# runners for long; the middle is summed up as "+N more". Bounded size:
# at most 16 entries of an address cut to 64 characters (about 1.5 KiB),
# well under gRPC's 8 KiB default metadata limit.
_KEEP_FIRST = 8
_KEEP_LAST = 8
_MAX_ADDRESS = 64


class AttemptRecord(NamedTuple):
    """One runner tried: its address, what came of it, and how long the try took."""

    runner: str
    outcome: str
    seconds: float


def attempt_outcome(placed: bool, error: BaseException | None) -> str:
    """The trailer's word for an attempt (``Attempt.placed``, ``Attempt.error``).

    committed: the runner took the call (whatever came of it then); nack: it
    refused, busy; unreachable: never reached, or no acknowledgement;
    does_not_fit: it can never run the call; passed: the pool passed a
    ramping runner over without asking it; timeout: the client's deadline or
    cancel ended the try; error: anything else that did not place the call.
    """
    if placed:
        return "timeout" if isinstance(error, ClientTimeout | ClientCanceled) else "committed"
    if isinstance(error, DoesNotFit):
        return "does_not_fit"
    if isinstance(error, PassedOn):
        return "passed"
    if isinstance(error, ServerTooBusy):
        return "nack"
    if isinstance(error, RunnerUnreachable):
        return "unreachable"
    return "error"


class RunnerPhases(NamedTuple):
    """What the runner reported about a call, in seconds (None: not reported)."""

    runner_wait: float | None
    cold_start: float
    image_pull: float
    execution: float | None


def runner_phases(*, scheduler_ns: int, execution_ns: int, image_pull_ns: int, prep_ns: int,
                  create_ns: int, init_ns: int, created: datetime | None,
                  started: datetime | None, completed: datetime | None) -> RunnerPhases:
    """The runner's phases from a ``CallFinished``'s fields (durations in ns).

    cold_start = ctrPrepDuration + ctrCreateDuration + initStartTime;
    image_pull = imagePullWaitDuration; execution = executionDuration, else
    startedAt -> completedAt. runner_wait is the slot wait: schedulerDuration
    (else createdAt -> startedAt) covers the whole time before the function
    started, which on fn's runners includes launching the container (image pull
    and cold start); those are taken out so that no time counts twice.
    """
    image_pull = max(image_pull_ns, 0) / 1e9
    cold_start = (max(prep_ns, 0) + max(create_ns, 0) + max(init_ns, 0)) / 1e9
    execution: float | None = None
    if execution_ns > 0:
        execution = execution_ns / 1e9
    elif started and completed and started <= completed:
        execution = (completed - started).total_seconds()
    before: float | None = None
    if scheduler_ns > 0:
        before = scheduler_ns / 1e9
    elif created and started and created <= started:
        before = (started - created).total_seconds()
    wait = None if before is None else max(0.0, before - image_pull - cold_start)
    return RunnerPhases(wait, cold_start, image_pull, execution)


class CallTimings:
    """One call's timeline at the LB, recorded by the parts as the call goes.

    ``start`` is the call's start on ``clock`` (``LBCall.started_mono``).
    """

    __slots__ = ("start", "_clock", "queue", "waited", "attempts", "_first", "_last",
                 "committed_at", "result_at", "finished_at", "ended_at", "status", "runner",
                 "reported", "over_at")

    def __init__(self, start: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.start = start
        self._clock = clock
        self.queue = 0.0  # seconds waited in the LB's queue, all waits together
        self.waited = False
        self.attempts = 0
        self._first: list[AttemptRecord] = []
        self._last: deque[AttemptRecord] = deque(maxlen=_KEEP_LAST)
        self.committed_at: float | None = None  # the (last) committed attempt began
        self.result_at: float | None = None  # the committed runner's result began to arrive
        self.finished_at: float | None = None  # its finished message arrived
        self.ended_at: float | None = None  # the agent was done with the call
        self.status = ""  # the agent's call_status, once ended
        self.runner = ""
        self.reported: RunnerPhases | None = None
        self.over_at: float | None = None  # the client got its answer (or went away)

    # -- recorded as the call goes -------------------------------------------

    def queued(self, seconds: float) -> None:
        """The call waited ``seconds`` in the LB's wait queue."""
        self.queue += seconds
        self.waited = True

    def attempted(self, runner: str, placed: bool, error: BaseException | None,
                  started: float) -> None:
        """A try on ``runner`` that began at ``started`` ended now."""
        outcome = attempt_outcome(placed, error)
        record = AttemptRecord(runner, outcome, self._clock() - started)
        self.attempts += 1
        if len(self._first) < _KEEP_FIRST:
            self._first.append(record)
        else:
            self._last.append(record)
        if outcome == "committed":
            self.committed_at = started

    def responded(self) -> None:
        """The committed runner's result (result_start, or the whole reply) arrived now.

        Once per committed attempt; the last one counts (an idempotent call
        run again after its runner was lost is measured by its second run)."""
        self.result_at = self._clock()

    def finished(self, phases: RunnerPhases) -> None:
        """The committed runner's finished message arrived now, reporting ``phases``."""
        self.finished_at = self._clock()
        self.reported = phases

    def ended(self, status: str, runner: str) -> None:
        """The agent is done: the call ended with ``status`` (a call_status) on ``runner``."""
        self.ended_at = self._clock()
        self.status = status
        self.runner = runner

    def over(self) -> float | None:
        """The call is over for the client now: that time, or None if it was already."""
        if self.over_at is not None:
            return None
        self.over_at = self._clock()
        return self.over_at

    # -- read at the end ----------------------------------------------------

    def trail(self) -> list[AttemptRecord | int]:
        """The attempts kept, with the number left out between first and last ones."""
        left_out = self.attempts - len(self._first) - len(self._last)
        middle: list[AttemptRecord | int] = [left_out] if left_out > 0 else []
        return [*self._first, *middle, *self._last]

    def breakdown(self, end: float) -> dict[str, float]:
        """Seconds per phase, only the phases the call went through (call ended at ``end``).

        placement runs from the call's start to the committed attempt (or to
        the end of placing, when nothing committed), less the queue; transfer
        from the result's arrival to ``end`` (the response handed to the
        client).
        """
        out: dict[str, float] = {}
        if self.waited:
            out["queue"] = self.queue
        placed_until = self.committed_at if self.committed_at is not None else self.ended_at
        if placed_until is not None:
            out["placement"] = max(0.0, placed_until - self.start - self.queue)
        r = self.reported
        if r is not None:
            if r.runner_wait is not None:
                out["runner_wait"] = r.runner_wait
            if r.cold_start > 0:
                out["cold_start"] = r.cold_start
            if r.image_pull > 0:
                out["image_pull"] = r.image_pull
            if r.execution is not None:
                out["execution"] = r.execution
        since = self.result_at if self.result_at is not None else self.finished_at
        if since is not None:
            out["transfer"] = max(0.0, end - since)
        return out


def trace_wanted(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """True when the request metadata has ``fnlb-trace: 1`` (or ``true``)."""
    for key, value in metadata or ():
        if key == TRACE_HEADER:
            return str(value).strip().lower() in ("1", "true")
    return False


def _ascii(text: str) -> str:
    # Metadata values are printable ASCII; runner addresses are, but say so.
    cut = text[:_MAX_ADDRESS]
    return cut.encode("ascii", "replace").decode() if not cut.isascii() else cut


def format_attempts(trail: list[AttemptRecord | int]) -> str:
    """The ``fnlb-attempts`` value: ``ADDRESS OUTCOME MSms`` entries joined by ``", "``.

        >>> format_attempts([AttemptRecord("10.0.0.1:9190", "nack", 0.0008),
        ...                  AttemptRecord("10.0.0.2:9190", "committed", 0.2051)])
        '10.0.0.1:9190 nack 0.8ms, 10.0.0.2:9190 committed 205.1ms'

    A long sweep keeps its first and last 8 attempts; ``+N more`` stands for
    the ones in between.
    """
    parts = []
    for item in trail:
        if isinstance(item, int):
            parts.append(f"+{item} more")
        else:
            parts.append(f"{_ascii(item.runner)} {item.outcome} {item.seconds * 1000:.1f}ms")
    return ", ".join(parts)


def format_phases(phases: dict[str, float], total: float) -> str:
    """The ``fnlb-phases`` value: every phase as ``name=ms``, then ``total=ms``.

        >>> format_phases({"placement": 0.0012, "execution": 0.2}, 0.2015)
        'queue=0.0, placement=1.2, runner_wait=0.0, cold_start=0.0, image_pull=0.0, \
execution=200.0, transfer=0.0, total=201.5'
    """
    parts = [f"{p}={phases.get(p, 0.0) * 1000:.1f}" for p in PHASES]
    parts.append(f"total={total * 1000:.1f}")
    return ", ".join(parts)


def parse_phases(value: str) -> dict[str, float]:
    """``format_phases``'s text back as milliseconds per name (``total`` included)."""
    out: dict[str, float] = {}
    for part in value.split(","):
        name, sep, ms = part.strip().partition("=")
        if sep:
            out[name] = float(ms)
    return out
