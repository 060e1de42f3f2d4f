"""A runner host: many independent fake runners in one process, one per port.

    runner-stub --listen 127.0.0.1:20000-20999     # 1,000 runners

Each port is its own runner: its own ``RunnerService`` (slots, memory, warm
cache, counters, draining) behind its own ``grpc.aio`` server, and its
runner id is its address. One server with many ports would not do: grpc
python tells a handler the peer's address, never the local one, so calls to
different ports could not be told apart. A server per port costs about
35 KiB and no CPU while idle (measured with 1,000 in one process), so a
host of 5,000 runners is ~200 MiB.

Made for scale tests and benchmarks (``make bench-scale``): thousands of
runners on one machine without thousands of processes. Lifecycle as
``StubServer``'s: ``start()`` logs one ``msg=listening addr=HOST:FIRST-LAST
runners=N``; ``shutdown(grace)`` drains every runner; ``stop(grace)`` may be
called twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from types import TracebackType

from fnlb.logs import kv
from runner_stub.config import StubConfig, split_listen
from runner_stub.errors import StartupError
from runner_stub.server import StubServer

__all__ = ["RunnerHost"]

log = logging.getLogger("runner_stub")


class _Totals:
    """What the CLI reads of ``StubServer.service``, summed over the host's runners."""

    __slots__ = ("_host",)

    def __init__(self, host: RunnerHost) -> None:
        self._host = host

    @property
    def active(self) -> int:
        return sum(s.service.active for s in self._host.runners)


class RunnerHost:
    """Serves one fake runner per port of ``config.listen`` (``HOST:FIRST-LAST``).

    ``runners`` are the ``StubServer``s in port order; ``runner(addr)`` finds one.
    """

    def __init__(self, config: StubConfig) -> None:
        host, first, last = split_listen(config.listen)
        self.config = config
        self._host = f"[{host}]" if ":" in host else host
        self._ports = range(first, last + 1)
        self.runners: list[StubServer] = []
        self._by_addr: dict[str, StubServer] = {}
        self._started = False

    @property
    def addr(self) -> str:
        """``HOST:FIRST-LAST`` as given."""
        return f"{self._host}:{self._ports[0]}-{self._ports[-1]}"

    @property
    def addrs(self) -> list[str]:
        """Every runner's address, in port order."""
        return [f"{self._host}:{port}" for port in self._ports]

    @property
    def service(self) -> _Totals:
        return _Totals(self)

    def runner(self, addr: str) -> StubServer:
        return self._by_addr[addr]

    async def start(self) -> None:
        """Bind every port (all or none: a port taken stops the host with StartupError)."""
        if self._started:
            raise RuntimeError("RunnerHost already started")
        self._started = True
        began = time.monotonic()
        for addr in self.addrs:
            # --runner-id is refused with a range: each runner's id is its address.
            server = StubServer(replace(self.config, listen=addr), announce=False)
            try:
                await server.start()
            except StartupError:
                await self.stop(0)
                raise
            self.runners.append(server)
            self._by_addr[addr] = server
        cfg = self.config
        log.info("listening", extra=kv(
            addr=self.addr, runners=len(self.runners), slots=cfg.slots,
            memory_mb=cfg.memory_mb, warm_cache=cfg.warm_cache, tls=str(cfg.tls).lower(),
            start_s=f"{time.monotonic() - began:.2f}"))

    def reload_tls(self) -> None:
        for server in self.runners:
            server.reload_tls()

    async def drain(self) -> None:
        await asyncio.gather(*(s.drain() for s in self.runners))

    async def shutdown(self, grace: float) -> None:
        """Drain every runner, wait up to ``grace`` for their calls, then stop."""
        await asyncio.gather(*(s.shutdown(grace) for s in self.runners))
        log.info("stopped", extra=kv(addr=self.addr))

    async def stop(self, grace: float | None = None) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.runners))

    async def wait_closed(self) -> None:
        """Return once every runner's server has stopped."""
        await asyncio.gather(*(s.wait_closed() for s in self.runners))

    async def __aenter__(self) -> RunnerHost:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop(0)
