"""Placers, selectable by name: ``make_placer("ch", config, metrics)``."""

from __future__ import annotations

from collections.abc import Callable

from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.placers._base import BasePlacer
from fnlb.placers.ch import ConsistentHashPlacer
from fnlb.placers.naive import NaivePlacer
from fnlb.runnerpool import PlacerConfig

__all__ = ["BasePlacer", "PLACERS", "make_placer", "register_placer"]

PlacerFactory = Callable[[PlacerConfig, Metrics], BasePlacer]

PLACERS: dict[str, PlacerFactory] = {
    "naive": NaivePlacer,
    "ch": ConsistentHashPlacer,
}


def register_placer(name: str, factory: PlacerFactory) -> None:
    PLACERS[name] = factory


def make_placer(name: str, config: PlacerConfig | None = None,
                metrics: Metrics | None = None) -> BasePlacer:
    """Build the placer called ``name``; unknown names are a ConfigError listing the known ones."""
    try:
        factory = PLACERS[name]
    except KeyError:
        known = ", ".join(sorted(PLACERS))
        raise ConfigError(f"--placer: unknown placer {name!r} (known: {known})") from None
    return factory(config if config is not None else PlacerConfig(),
                   metrics if metrics is not None else Metrics())
