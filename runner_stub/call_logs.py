"""The stub's per-call log lines, kept for fn's ``RunnerProtocol/StreamLogs``.

Every accepted call that ends leaves one line (stdout when it succeeded,
stderr when it failed). The newest ``keep`` lines are kept; a StreamLogs
reader pulls them batch by batch with a cursor (the last ``seq`` it got).

    logs = CallLogs(keep=1000)
    logs.add(app_id="a", fn_id="f", container_id="slot", call_id="c1",
             text="ok", stderr=False)
    lines = await logs.wait_after(0)       # [LogLine(seq=1, ...)]
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from fnlb.fn import runner_protocol_pb2 as fn_pb2

__all__ = ["CallLogs", "LogLine", "log_response"]

_Line = fn_pb2.LogResponseMsg.Container.Request.Line


@dataclass(frozen=True)
class LogLine:
    seq: int
    app_id: str
    fn_id: str
    container_id: str
    call_id: str
    timestamp_ms: int
    stderr: bool
    text: str


class CallLogs:
    """A bounded, append-only list of log lines that readers can wait on."""

    def __init__(self, keep: int = 1000) -> None:
        self._lines: deque[LogLine] = deque(maxlen=keep)
        self._seq = 0
        self._added = asyncio.Event()

    def add(self, *, app_id: str, fn_id: str, container_id: str, call_id: str,
            text: str, stderr: bool) -> None:
        self._seq += 1
        self._lines.append(LogLine(self._seq, app_id, fn_id, container_id, call_id,
                                   time.time_ns() // 1_000_000, stderr, text))
        # Wake every waiter, then start a new generation for the next ones.
        self._added.set()
        self._added = asyncio.Event()

    def after(self, seq: int, limit: int = 500) -> list[LogLine]:
        """The kept lines newer than ``seq``, oldest first, at most ``limit``."""
        newer = [line for line in self._lines if line.seq > seq]
        return newer[:limit]

    async def wait_after(self, seq: int, limit: int = 500) -> list[LogLine]:
        """As ``after``, but wait until there is at least one line."""
        while True:
            lines = self.after(seq, limit)
            if lines:
                return lines
            await self._added.wait()


def log_response(lines: Iterable[LogLine]) -> fn_pb2.LogResponseMsg:
    """fn's LogResponseMsg: lines grouped by container, then by call, in order."""
    msg = fn_pb2.LogResponseMsg()
    containers: dict[tuple[str, str, str], fn_pb2.LogResponseMsg.Container] = {}
    requests: dict[tuple[str, str, str, str], fn_pb2.LogResponseMsg.Container.Request] = {}
    for line in lines:
        ckey = (line.app_id, line.fn_id, line.container_id)
        container = containers.get(ckey)
        if container is None:
            container = msg.data.add(applicationId=line.app_id, functionId=line.fn_id,
                                     containerId=line.container_id)
            containers[ckey] = container
        rkey = (*ckey, line.call_id)
        request = requests.get(rkey)
        if request is None:
            request = container.data.add(requestId=line.call_id)
            requests[rkey] = request
        request.data.add(timestamp=line.timestamp_ms,
                         source=_Line.STDERR if line.stderr else _Line.STDOUT,
                         data=line.text.encode())
    return msg
