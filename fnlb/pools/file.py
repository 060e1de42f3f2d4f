"""File pool (``--runners-file PATH``): runner addresses, one per line.

::

    # runners for the eu pool
    10.0.0.11:9190
    10.0.0.12:9190   # trailing comments are fine
    [fd00::13]:9190

Blank lines and ``#`` comments are ignored; duplicates are dropped. The file is
re-read when its modification time, size or inode changes (checked every
``--runners-file-interval``), so an editor's rename-over and a Kubernetes
ConfigMap's symlink swap are both seen. A file that cannot be read or has a bad
line keeps the previous set and logs the line number; at startup it stops the
LB instead (a typo should not leave an LB with no runners).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fnlb.errors import ConfigError
from fnlb.pools._address import parse_address
from fnlb.pools._source import PollingSource, SourceError

__all__ = ["FileSource", "parse_runners_file"]


def parse_runners_file(text: str, path: str = "runners file") -> list[str]:
    """Addresses in ``text``; SourceError naming the first bad line."""
    seen: dict[str, None] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) > 1:
            raise SourceError(f"{path}:{n}: one address per line, got {line!r}")
        try:
            seen[parse_address(line, source=f"{path}:{n}")] = None
        except ConfigError as e:
            raise SourceError(str(e)) from None
    return list(seen)


class FileSource(PollingSource):
    name = "file"
    fatal_at_start = True

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.path = path
        self._signature: tuple[int, int, int] | None = None

    def _read(self) -> tuple[tuple[int, int, int], str] | None:
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature == self._signature:
                return None
            return signature, self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"--runners-file {self.path}: {e}") from None

    async def load(self) -> list[str] | None:
        # stat + read are blocking file I/O: keep them off the event loop.
        got = await asyncio.to_thread(self._read)
        if got is None:
            return None
        signature, text = got
        addresses = parse_runners_file(text, str(self.path))
        # Remember the signature only once the content parsed, so a bad file keeps
        # failing (and keeps its error visible) until it is fixed; the source logs
        # each distinct error once.
        self._signature = signature
        return addresses
