"""Membership sources: what feeds a ``DynamicRunnerPool`` its runner addresses.

A source owns one name (``static``, ``file``, ``dns``) and reports its whole
current set each time it learns something; the pool diffs. A lookup that fails
reports the error and keeps the source's previous set: one bad read or DNS
timeout must never empty a pool.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Protocol

from fnlb.errors import ConfigError
from fnlb.logs import kv

__all__ = ["Membership", "Source", "PollingSource", "SourceError"]

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A lookup failed (unreadable file, DNS timeout): expected, keeps the last set."""


class Membership(Protocol):
    """The pool as a source sees it."""

    def set_source(self, source: str, addresses: Iterable[str]) -> None:
        """``source`` now names exactly ``addresses`` (already validated)."""
        ...

    def source_error(self, source: str, error: str | None) -> None:
        """``source``'s last lookup failed with ``error`` (None: it works again)."""
        ...


class Source(Protocol):
    name: str

    async def start(self, pool: Membership) -> None:
        """Load once (``ConfigError`` if that must stop the LB starting), then keep watching."""
        ...

    async def stop(self) -> None: ...


class PollingSource(abc.ABC):
    """A source that re-reads something every ``interval`` seconds.

    ``fatal_at_start``: a failed first load is a ``ConfigError`` (the LB does not
    start) instead of a logged, retried error.
    """

    name = "poll"
    fatal_at_start = False

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ConfigError(f"{self.name}: poll interval must be > 0, got {interval}")
        self.interval = interval
        self._pool: Membership | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    @abc.abstractmethod
    async def load(self) -> list[str] | None:
        """The current addresses; None when nothing changed; SourceError on failure."""

    async def start(self, pool: Membership) -> None:
        self._pool = pool
        try:
            await self.refresh()
        except SourceError as e:
            raise ConfigError(str(e)) from None
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"fnlb-source-{self.name}")

    async def refresh(self) -> None:
        """Look up now (the poll loop calls this; tests may too)."""
        assert self._pool is not None, "start() first"
        first = self._task is None
        try:
            addresses = await self.load()
        except SourceError as e:
            if first and self.fatal_at_start:
                raise
            msg = str(e)
            if msg != self._last_error:
                # Once per distinct error, not once per poll.
                log.warning("runner source failed, keeping its last runners",
                            extra=kv(source=self.name, error=msg))
            self._last_error = msg
            self._pool.source_error(self.name, msg)
            return
        if self._last_error is not None:
            log.info("runner source recovered", extra=kv(source=self.name))
            self._last_error = None
            self._pool.source_error(self.name, None)
        if addresses is not None:
            self._pool.set_source(self.name, addresses)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # a bug must not stop discovery for good
                log.exception("runner source crashed", extra=kv(source=self.name))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
