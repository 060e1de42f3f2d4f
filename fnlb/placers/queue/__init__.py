"""The overload wait queue: calls that found no free runner wait here for a turn.

A call waits when no runner is believed to have a free slot; the LB calls
``release(n)`` whenever it believes ``n`` slots are free and not yet handed out
(a call of ours ended, a runner reported free slots, a runner joined), and the
queue wakes up to ``n`` waiters in fair order. Nothing here polls or sleeps::

    queue = WaitQueue(QueueConfig(max_queue=10_000), on_event=observe)
    try:
        grant = await queue.wait(app_id, timeout=seconds_left)
    except QueueFull as e:      # at once: e.reason, e.limit, e.pushback_ms
        ...
    except TimeoutError:        # the entry is gone, nothing leaks
        ...
    # try the runners believed free; if all of them refused (our view was stale):
    grant = await queue.wait(app_id, timeout=seconds_left, requeue=grant)
    # when the placed call ends (only matters with per-app in-flight limits):
    grant.done()

    queue.release(believed_free - queue.pending_grants())   # on every capacity event

One module per part: ``_wait`` (``WaitQueue`` and ``Grant``: waiting, leaving,
closing), ``_fair`` (the order: start-time fair queueing per app, requeue,
per-app in-flight limits, and what each costs), ``_rate`` (the grant rate and
the pushback a shed call is told) and ``_config`` (``QueueConfig``,
``QueueFull``, counters and events). Import from ``fnlb.placers.queue``.
"""

from fnlb.placers.queue._config import QueueConfig, QueueCounters, QueueEvent, QueueFull
from fnlb.placers.queue._rate import (
    PUSHBACK_DEFAULT_MS,
    PUSHBACK_MAX_MS,
    PUSHBACK_MIN_MS,
    RATE_WINDOW_S,
)
from fnlb.placers.queue._wait import Grant, WaitQueue

__all__ = [
    "Grant",
    "QueueConfig",
    "QueueCounters",
    "QueueEvent",
    "QueueFull",
    "WaitQueue",
    "PUSHBACK_DEFAULT_MS",
    "PUSHBACK_MAX_MS",
    "PUSHBACK_MIN_MS",
    "RATE_WINDOW_S",
]
