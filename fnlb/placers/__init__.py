"""Placers, selectable by name: ``make_placer("ch", config, metrics)``.

``naive`` and ``ch`` are fn's; ``p2c`` and ``chbl`` go beyond it (docs/placers.md
says when to choose which). Every placer gets the LB's ``LoadTracker``
(``load=``; a fresh one when omitted) and keeps fn's placement loop.
"""

from __future__ import annotations

from typing import Protocol

from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.placers._base import BasePlacer
from fnlb.placers.capacity import Capacity
from fnlb.placers.ch import ConsistentHashPlacer
from fnlb.placers.chbl import BoundedLoadHashPlacer
from fnlb.placers.load import LoadTracker
from fnlb.placers.naive import NaivePlacer
from fnlb.placers.p2c import PowerOfTwoPlacer
from fnlb.placers.warm import WarmFirstPlacer
from fnlb.runnerpool import PlacerConfig

__all__ = ["BasePlacer", "PLACERS", "PlacerFactory", "make_placer", "register_placer"]


class PlacerFactory(Protocol):
    def __call__(self, config: PlacerConfig, metrics: Metrics, *,
                 load: LoadTracker | None = None,
                 capacity: Capacity | None = None,
                 idempotent_retries: int = 0) -> BasePlacer: ...


PLACERS: dict[str, PlacerFactory] = {
    "naive": NaivePlacer,
    "ch": ConsistentHashPlacer,
    "p2c": PowerOfTwoPlacer,
    "chbl": BoundedLoadHashPlacer,
    "warm": WarmFirstPlacer,
}


def register_placer(name: str, factory: PlacerFactory) -> None:
    PLACERS[name] = factory


def make_placer(name: str, config: PlacerConfig | None = None,
                metrics: Metrics | None = None, *,
                load: LoadTracker | None = None, c: float | None = None,
                capacity: Capacity | None = None,
                idempotent_retries: int = 0) -> BasePlacer:
    """Build the placer called ``name``; unknown names are a ConfigError listing the known ones.

    ``load`` is the LB's one LoadTracker (feed runner Status reports into it);
    when omitted the placer makes its own and exposes it as ``placer.load``.
    ``c`` is the load bound of the bounded-load placers (``chbl``, ``warm``:
    ``--chbl-c``); placers without one ignore it, and None keeps their default.
    ``capacity`` (reading that same tracker) turns on the overload wait queue;
    ``idempotent_retries``: how many more runners an idempotent call may run on
    when its runner is lost (``--idempotent-retries``).
    """
    try:
        factory = PLACERS[name]
    except KeyError:
        known = ", ".join(sorted(PLACERS))
        raise ConfigError(f"--placer: unknown placer {name!r} (known: {known})") from None
    config = config if config is not None else PlacerConfig()
    metrics = metrics if metrics is not None else Metrics()
    load = load if load is not None else LoadTracker()
    if c is not None and isinstance(factory, type) and issubclass(factory, BoundedLoadHashPlacer):
        return factory(config, metrics, load=load, capacity=capacity, c=c,
                       idempotent_retries=idempotent_retries)
    return factory(config, metrics, load=load, capacity=capacity,
                   idempotent_retries=idempotent_retries)
