"""The ``--runners`` list as a membership source: a fixed set of addresses.

A fixed list still goes through ``DynamicRunnerPool``, so it gets health
checks, ejection and draining like every other source.
"""

from __future__ import annotations

from collections.abc import Sequence

from fnlb.pools._source import Membership

__all__ = ["StaticSource"]


class StaticSource:
    """Set once at start, never changed."""

    name = "static"

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)

    async def start(self, pool: Membership) -> None:
        pool.set_source(self.name, self.addresses)

    async def stop(self) -> None:
        return None
