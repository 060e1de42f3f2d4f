"""The overload wait queue: calls that found no free runner wait here for a turn."""

from fnlb.placers.queue._wait import (
    PUSHBACK_DEFAULT_MS,
    PUSHBACK_MAX_MS,
    PUSHBACK_MIN_MS,
    RATE_WINDOW_S,
    Grant,
    QueueConfig,
    QueueCounters,
    QueueEvent,
    QueueFull,
    WaitQueue,
)

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
