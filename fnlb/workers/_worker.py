"""A worker's side of ``fnlb serve --workers N``: its private endpoints, its link
to the supervisor, and its log tag. Runs in the worker process (``fnlb.cli``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from fnlb.config import LBConfig

__all__ = ["READY", "SupervisorLink", "WorkerPaths", "remove_private_endpoints",
           "tag_worker_logs"]

# What a worker writes on its link once it serves.
READY = b"ready\n"


@dataclass(frozen=True, slots=True)
class WorkerPaths:
    """A worker's private endpoints, inside the supervisor's 0700 directory."""

    admin: str
    metrics: str

    @classmethod
    def of(cls, directory: str, index: int) -> WorkerPaths:
        return cls(admin=os.path.join(directory, f"w{index}-admin.sock"),
                   metrics=os.path.join(directory, f"w{index}-metrics.sock"))


def remove_private_endpoints(config: LBConfig) -> None:
    """A worker whose supervisor died removes its sockets, and the directory if it is last."""
    for path in (config.admin_unix, config.metrics_unix):
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if config.admin_unix:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(config.admin_unix))


def tag_worker_logs(index: int) -> None:
    """Add ``worker=i`` to every log line of this process (call after setup_logging)."""

    class _WorkerField(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.kv = {"worker": index, **(getattr(record, "kv", None) or {})}
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField())


class SupervisorLink:
    """A worker's end of its socketpair with the supervisor (``--worker-fd``)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)

    def ready(self) -> None:
        # A supervisor that died while this worker started is no error here:
        # watch() sees the closed end at once and the worker drains.
        with contextlib.suppress(OSError):
            self._sock.sendall(READY)

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` once on the running loop when the supervisor's end closes."""
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        fd = self._sock.fileno()

        def readable() -> None:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                on_gone()

        loop.add_reader(fd, readable)
