"""A start that fails on a taken port ends cleanly: its error is the last thing printed.

Before, with --admin-listen (or --metrics-listen) taken, the front-door server
was left running and grpc's ``Server.__del__`` printed a traceback ending in
"RuntimeError: Event loop is closed" under the clear error.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fnlb.config import LBConfig
from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.server import LBServer
from tests.fakes import FakePool, FakeRunner


@contextlib.contextmanager
def taken_port() -> Iterator[str]:
    """A 127.0.0.1 address some other socket listens on for the duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("flag", "event_loop", "error"), [
    ("--admin-listen", "auto", "cannot bind (address in use, or not an address of this machine)"),
    ("--admin-listen", "asyncio",
     "cannot bind (address in use, or not an address of this machine)"),
    ("--metrics-listen", "auto", "cannot bind: "),
    ("--listen", "auto", "cannot bind (address in use, or not an address of this machine)"),
])
def test_taken_port_is_the_last_thing_printed(flag: str, event_loop: str, error: str) -> None:
    with taken_port() as addr:
        listen = {"--listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0",
                  "--admin-listen": "127.0.0.1:0", flag: addr}
        r = subprocess.run(
            [sys.executable, "-m", "fnlb", "serve", "--runners", "127.0.0.1:1",
             "--event-loop", event_loop, *(x for kv in listen.items() for x in kv)],
            capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"fnlb: error: {flag} {addr}: {error}"), r.stderr
    assert "Traceback" not in r.stderr and "Event loop is closed" not in r.stderr, r.stderr


async def test_failed_start_stops_what_it_started() -> None:
    runner = FakeRunner("127.0.0.1:9001")
    with taken_port() as taken:
        # The metrics address is bound after the pool and the front door started.
        lb = LBServer(LBConfig(listen="127.0.0.1:0", metrics_listen=taken, admin_listen=""),
                      metrics=Metrics(), pool=FakePool([runner]))
        with pytest.raises(ConfigError, match=f"^--metrics-listen {taken}: cannot bind: "):
            await lb.start()
    assert runner.closed  # the pool was shut down
    host, _, port = lb.address.rpartition(":")
    with pytest.raises(ConnectionRefusedError):  # and the front door closed
        socket.create_connection((host, int(port)), timeout=5).close()
    await lb.stop(0)  # still safe to call
    await lb.wait_closed()
