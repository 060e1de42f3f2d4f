"""Start fnlb and runner-stub processes, wait until they listen, always stop them.

One harness for the tests, the benchmarks and ``make demo``. A process listens
on port 0 and logs ``msg=listening addr=HOST:PORT`` (the LB adds
``metrics_addr=`` and ``admin_addr=``); ``start`` waits for that line and
parses it, so there are no port races and no sleeps::

    with running_stubs(2) as stubs, running("fnlb", [
            "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--runners", ",".join(s.addr for s in stubs)]) as lb:
        print(lb.addr, lb.fields["metrics_addr"])

Where a fixed port is unavoidable (``--workers N`` shares one port through
SO_REUSEPORT; a runner restarted at the same address), ``reserved_port`` keeps
the port ours for as long as the block runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

__all__ = ["LISTENING", "Proc", "ProcGroup", "parse_logfmt", "reserved_port", "running",
           "running_stubs", "spawn", "start", "wait_until"]

LISTENING = r"msg=listening"

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs of one log line (quoted values unquoted)."""
    return {k: v.strip('"') for k, v in _KV.findall(line)}


class Proc:
    """``python -m module args`` whose merged stdout/stderr is kept line by line.

    ``fields`` holds the pairs of its start line once ``wait_ready`` saw it.
    """

    def __init__(self, name: str, argv: list[str], popen: subprocess.Popen[str]) -> None:
        self.name = name
        self.argv = argv
        self.popen = popen
        self.lines: list[str] = []
        self.fields: dict[str, str] = {}
        self._cond = threading.Condition()
        self._eof = False
        self._pump_thread = threading.Thread(target=self._pump, name=f"pump-{name}", daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def addr(self) -> str:
        return self.fields["addr"]

    def wait_ready(self, pattern: str = LISTENING, timeout: float = 30.0) -> Proc:
        """Wait for the start line, keep its fields; stop the process if it never comes."""
        try:
            self.fields = parse_logfmt(self.wait_for_line(pattern, timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_line(self, pattern: str, timeout: float = 20.0, start: int = 0) -> str:
        """Block until a line from index ``start`` on matches ``pattern`` (regex); return it."""
        rx = re.compile(pattern)
        checked = start
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[checked:]:
                    if rx.search(line):
                        return line
                checked = max(checked, len(self.lines))
                if self._eof:
                    raise AssertionError(
                        f"{self.name} exited (rc={self.popen.poll()}) before logging "
                        f"{pattern!r}:\n" + self._tail())
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise AssertionError(f"{self.name}: timed out after {timeout}s waiting "
                                         f"for {pattern!r}:\n" + self._tail())

    def read_lines(self, start: int = 0) -> list[str]:
        """A copy of the lines logged so far, from index ``start`` on."""
        with self._cond:
            return self.lines[start:]

    def output(self) -> str:
        """The last 80 lines, for error messages."""
        with self._cond:
            return self._tail()

    def _tail(self) -> str:
        return "\n".join(self.lines[-80:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.popen.wait(timeout)
        self.close()
        return rc

    def stop(self, timeout: float = 10.0, *, drain: bool = True) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; safe to call twice.

        The first SIGTERM makes fnlb and the stub drain in-flight calls; with
        ``drain=False`` a second one follows after half a second, which makes
        them exit at once.
        """
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                if not drain:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.popen.wait(min(0.5, timeout))
                    self.signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.close()

    def close(self) -> None:
        """Release the pipe once the process is gone (the pump sees EOF first)."""
        if self.popen.poll() is None:
            return
        self._pump_thread.join(5)
        if self.popen.stdout is not None and not self.popen.stdout.closed:
            self.popen.stdout.close()


def spawn(module: str, args: Sequence[str], env: dict[str, str] | None = None, *,
          name: str = "", cwd: str | None = None) -> Proc:
    """Start ``python -m module args`` without waiting; ``wait_ready()`` comes next.

    Starting several before waiting for any overlaps their Python start-up.
    """
    argv = [sys.executable, "-m", module, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A session of its own: a Ctrl-C meant for us does not reach the child,
    # which we stop in order instead.
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=full_env, cwd=cwd, start_new_session=True)
    return Proc(name or module, argv, popen)


def start(module: str, args: Sequence[str], env: dict[str, str] | None = None,
          ready: str = LISTENING, *, name: str = "", cwd: str | None = None,
          timeout: float = 30.0) -> Proc:
    """Start ``python -m module args`` and wait for its listening line."""
    return spawn(module, args, env, name=name, cwd=cwd).wait_ready(ready, timeout)


@contextlib.contextmanager
def running(module: str, args: Sequence[str], env: dict[str, str] | None = None,
            ready: str = LISTENING, *, name: str = "") -> Iterator[Proc]:
    proc = start(module, args, env, ready, name=name)
    try:
        yield proc
    finally:
        proc.stop()


class ProcGroup:
    """Processes started together and stopped together, the last started first.

        with ProcGroup() as group:
            stub = group.start("runner_stub", ["--listen", "127.0.0.1:0"])
    """

    def __init__(self, *, drain: bool = True) -> None:
        self.procs: list[Proc] = []
        self._drain = drain

    def spawn(self, module: str, args: Sequence[str], env: dict[str, str] | None = None,
              **kw: Any) -> Proc:
        proc = spawn(module, args, env, **kw)
        self.procs.append(proc)
        return proc

    def start(self, module: str, args: Sequence[str], env: dict[str, str] | None = None,
              ready: str = LISTENING, *, timeout: float = 30.0, **kw: Any) -> Proc:
        return self.spawn(module, args, env, **kw).wait_ready(ready, timeout)

    def stop(self, proc: Proc) -> None:
        proc.stop(drain=self._drain)
        self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.procs.pop().stop(drain=self._drain)

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def running_stubs(n: int, args: Sequence[str] = ()) -> Iterator[list[Proc]]:
    """``n`` runner stubs on port 0 (started side by side)."""
    with ProcGroup() as group:
        for _ in range(n):
            group.spawn("runner_stub", ["--listen", "127.0.0.1:0", *args])
        for p in list(group.procs):
            p.wait_ready()
        yield list(group.procs)


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port no other process gets while the block runs, though our own servers may listen on it.

    For what needs a fixed port; everything else binds port 0. The socket is
    bound with SO_REUSEADDR and never listens, so on Linux: connecting to the
    port is refused until a server of ours listens there; such a server may
    bind it because gRPC and asyncio servers set SO_REUSEADDR too, and it may
    stop and bind again; binding port 0 never yields it; a plain bind fails.
    Unlike bind-close-reuse, no one can take the port between our choosing it
    and our server binding it, nor while our server restarts.

        with reserved_port() as port, running("runner_stub", ["--listen", f"127.0.0.1:{port}"]):
            ...
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        yield int(s.getsockname()[1])


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
