"""fn's static runner pool: a fixed list of addresses (``--runners``).

``StaticRunnerPool`` is fn's pool as is: no health checking, no membership
changes. ``fnlb serve`` uses a ``StaticSource`` in a ``DynamicRunnerPool``
instead, so a fixed list gets health checks, ejection and draining too.
"""

from __future__ import annotations

from collections.abc import Sequence

from fnlb.pools._source import Membership
from fnlb.runnerpool import MTLSRunnerFactory, Runner, RunnerCall

__all__ = ["StaticRunnerPool", "StaticSource"]


class StaticRunnerPool:
    """Every runner is built once by the factory; placers get an immutable tuple."""

    source = "static"

    def __init__(self, addresses: Sequence[str], factory: MTLSRunnerFactory,
                 tls: object | None = None) -> None:
        self._runners: tuple[Runner, ...] = tuple(factory(a, tls) for a in addresses)  # type: ignore[arg-type]

    async def runners(self, call: RunnerCall) -> Sequence[Runner]:
        return self._runners

    def snapshot(self) -> Sequence[Runner]:
        return self._runners

    async def shutdown(self) -> None:
        runners, self._runners = self._runners, ()
        for r in runners:
            await r.close()


class StaticSource:
    """The ``--runners`` list as a membership source: set once, never changed."""

    name = "static"

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)

    async def start(self, pool: Membership) -> None:
        pool.set_source(self.name, self.addresses)

    async def stop(self) -> None:
        return None
