"""The accept deadline of one runner: a try must be answered within ``timeout`` seconds.

An answer is a NACK, a "does not fit", an acknowledgement or any first result.
Of a runner that acknowledges calls ("ack") an unanswered try is cancelled and
tried elsewhere by the path that sent it (``_tryexec``, ``callstream``). Of any
other runner the call goes on (fn's rule: it may run) and ``watch`` only tells
``notify``, unless the runner was heard from (any message on any RPC) since the
try was sent: a runner that answers other calls or a status poll is not stuck,
its function is just slow to answer (fn's runners send nothing before the
function's response starts).

    watch = AcceptWatch("10.0.0.5:9190", 1.0, notify)
    timer = watch.watch(time.monotonic())   # after sending a try
    ...; watch.heard(); timer.cancel()      # on the first message
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["AcceptWatch"]


class AcceptWatch:
    """The deadline, when the runner was last heard from, and who hears of a silence."""

    __slots__ = ("timeout", "last_heard", "reason", "_notify")

    def __init__(self, address: str, timeout: float | None,
                 notify: Callable[[str], None]) -> None:
        """``timeout`` None or <= 0: no deadline."""
        self.timeout = timeout if timeout is not None and timeout > 0 else None
        self.last_heard = float("-inf")
        self.reason = (f"runner {address}: no answer to the try within {self.timeout:g}s"
                       if self.timeout is not None else "")
        self._notify = notify

    def heard(self) -> None:
        """The runner sent something (a message, a reply, a status)."""
        self.last_heard = time.monotonic()

    def watch(self, sent_at: float) -> asyncio.TimerHandle | None:
        """For a try sent at ``sent_at`` (time.monotonic) that goes on unanswered: notify
        at the deadline unless the runner is heard from by then. Cancel it on an answer."""
        if self.timeout is None:
            return None
        return asyncio.get_running_loop().call_later(self.timeout, self.unanswered, sent_at)

    def unanswered(self, sent_at: float) -> None:
        """The deadline of a try sent at ``sent_at`` passed without an answer to it."""
        if self.last_heard < sent_at:
            self._notify(self.reason)
