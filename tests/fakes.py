"""In-process fake runners, pools and a clock for placer/tracker/pool unit tests.

They stand in for the *runners* and for time, never for the placer, tracker or
pool under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from fnlb.calls import LBCall
from fnlb.errors import PoolError, RunnerError, RunnerUnreachable, ServerTooBusy
from fnlb.runnerpool import Attempt, CallModel, RunnerCall, RunnerStatus


class Clock:
    """A hand-moved monotonic clock: timeouts and freshness are tested without sleeping.

        clock = Clock()
        tracker = LoadTracker(fresh_for=1.0, clock=clock)
        clock.now += 1.5
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """``behaviour`` is "ok", "busy", "down", "fail", "hang" or a callable -> Attempt."""

    def __init__(self, address: str, behaviour: str | Callable[[RunnerCall], Attempt] = "ok",
                 delay: float = 0.0) -> None:
        self.address = address
        self.behaviour = behaviour
        self.delay = delay
        self.tried: list[str] = []
        self.entered = asyncio.Event()
        self.closed = False

    async def try_exec(self, call: RunnerCall) -> Attempt:
        self.tried.append(call.model.id)
        self.entered.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        b = self.behaviour
        if callable(b):
            return b(call)
        if b == "ok":
            call.response.start(200, [])
            call.response.write(call.request_body())
            return Attempt(True, None)
        if b == "busy":
            return Attempt(False, ServerTooBusy())
        if b == "down":
            return Attempt(False, RunnerUnreachable(f"{self.address} down"))
        if b == "fail":
            return Attempt(True, RunnerError("boom", runner=self.address))
        if b == "hang":
            await asyncio.Event().wait()
        raise AssertionError(f"unknown behaviour {b!r}")

    async def status(self) -> RunnerStatus:
        return RunnerStatus(runner_id=self.address)

    async def close(self) -> None:
        self.closed = True


class FakePool:
    def __init__(self, runners: Sequence[FakeRunner], error: PoolError | None = None) -> None:
        self.list = list(runners)
        self.error = error
        self.lookups = 0

    async def runners(self, call: RunnerCall) -> Sequence[FakeRunner]:
        self.lookups += 1
        if self.error is not None:
            raise self.error
        return tuple(self.list)

    async def shutdown(self) -> None:
        for r in self.list:
            await r.close()


def make_call(fn_id: str = "fn", body: bytes = b"hello", call_type: str = "sync",
              call_id: str = "c1") -> LBCall:
    return LBCall(CallModel(id=call_id, fn_id=fn_id, type=call_type), body)
