"""fnlb.drain.Drain: the front door's count of handlers in flight."""

from __future__ import annotations

import asyncio

import pytest

from fnlb.drain import Drain
from fnlb.errors import ShuttingDown


async def test_a_handler_counted_out_from_another_task_leaves_nothing_behind() -> None:
    # grpc.aio may finalize a streaming handler (an async generator) from a task
    # other than the one that entered: the count must follow the entering task.
    drain = Drain()
    entered: asyncio.Future[asyncio.Task[object] | None] = asyncio.Future()

    async def handler() -> None:
        entered.set_result(drain.enter())
        await asyncio.Event().wait()

    task = asyncio.ensure_future(handler())
    who = await entered
    assert len(drain) == 1 and not await drain.wait_idle(0)
    task.cancel()
    drain.leave(who)  # from this task, not the handler's
    assert len(drain) == 0 and await drain.wait_idle(0)


async def test_draining_refuses_new_handlers_and_cut_cancels_the_running_ones() -> None:
    drain = Drain()
    started = asyncio.Event()

    async def handler() -> None:
        task = drain.enter()
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            drain.leave(task)

    running = asyncio.ensure_future(handler())
    await started.wait()
    drain.begin()
    with pytest.raises(ShuttingDown, match="draining"):
        drain.enter()
    assert drain.cut("grace over") == 1 and drain.cut_reason == "grace over"
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await drain.wait_idle(1)
