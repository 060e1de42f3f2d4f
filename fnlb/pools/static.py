"""fn's static runner pool: a fixed list of addresses (``--runners``)."""

from __future__ import annotations

from collections.abc import Sequence

from fnlb.runnerpool import MTLSRunnerFactory, Runner, RunnerCall

__all__ = ["StaticRunnerPool"]


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
