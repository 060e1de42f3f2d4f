"""The wait queue's settings, its one error and what it reports: ``QueueConfig``
(bounds, weights, in-flight limits; checked when made), ``QueueFull`` (shed at
once, with a pushback hint), ``QueueCounters`` and the ``QueueEvent`` kinds an
observer sees."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from fnlb.errors import ConfigError, FnlbError

__all__ = ["Observer", "QueueConfig", "QueueCounters", "QueueEvent", "QueueFull"]

QueueEvent = Literal[
    "queued",          # a new waiter entered (waited_s 0)
    "requeued",        # a woken waiter came back to the front of its line (waited_s 0)
    "granted",         # a waiter got a turn
    "timeout",         # its timeout passed while it waited
    "cancelled",       # its task was cancelled while it waited
    "returned",        # granted, but cancelled before it resumed: the turn went on
    "closed",          # woken by close()
    "queue_full",      # refused: max_queue
    "app_queue_full",  # refused: max_queue_per_app
]
Observer = Callable[[QueueEvent, str, float], None]


class QueueFull(FnlbError):
    """The wait queue is at a bound: shed the call at once (``RESOURCE_EXHAUSTED``).

    ``reason`` is ``"queue_full"`` (``max_queue``) or ``"app_queue_full"``
    (``max_queue_per_app``), ``limit`` that bound, ``pushback_ms`` when a retry
    may find room (for the ``grpc-retry-pushback-ms`` trailer).
    """

    def __init__(self, reason: Literal["queue_full", "app_queue_full"], limit: int,
                 pushback_ms: int, app_id: str = "") -> None:
        if reason == "queue_full":
            msg = f"LB wait queue full: {limit} calls already wait (--max-queue)"
        else:
            msg = (f"LB wait queue full for app {app_id!r}: {limit} of its calls "
                   "already wait (--max-queue-per-app)")
        super().__init__(msg)
        self.reason = reason
        self.limit = limit
        self.pushback_ms = pushback_ms
        self.app_id = app_id


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Bounds, weights and in-flight limits of a ``WaitQueue``.

    ``weights`` and ``inflight_limits`` map app ids to their value; apps not
    named get weight 1.0 and ``inflight_limit`` (``None``: no limit).
    """

    max_queue: int = 10_000
    max_queue_per_app: int = 5_000
    weights: Mapping[str, float] = field(default_factory=dict)
    inflight_limit: int | None = None
    inflight_limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue must be at least 1 (got {self.max_queue})")
        if self.max_queue_per_app < 1:
            raise ConfigError(
                f"--max-queue-per-app must be at least 1 (got {self.max_queue_per_app})")
        for app, w in self.weights.items():
            if not (math.isfinite(w) and w > 0):
                raise ConfigError(f"queue weight of app {app!r} must be a number > 0 (got {w})")
        limits = dict(self.inflight_limits)
        if self.inflight_limit is not None:
            limits[""] = self.inflight_limit
        for app, n in limits.items():
            if n < 1:
                who = f"of app {app!r}" if app else "per app"
                raise ConfigError(f"in-flight limit {who} must be at least 1 (got {n})")
        # Frozen means frozen: callers' dicts may change after this.
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "inflight_limits",
                           MappingProxyType(dict(self.inflight_limits)))

    def weight_of(self, app_id: str) -> float:
        return self.weights.get(app_id, 1.0)

    def limit_of(self, app_id: str) -> int | None:
        return self.inflight_limits.get(app_id, self.inflight_limit)


@dataclass
class QueueCounters:
    """Totals since the queue was made (what the metrics are built from)."""

    queued: int = 0
    requeued: int = 0
    granted: int = 0
    timeouts: int = 0
    cancelled: int = 0
    returned: int = 0
    closed: int = 0
    rejected: dict[str, int] = field(
        default_factory=lambda: {"queue_full": 0, "app_queue_full": 0})
