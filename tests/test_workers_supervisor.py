"""The ``--workers`` supervisor in process: workers that never start, or stop starting."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from fnlb.config import LBConfig
from fnlb.harness import wait_until
from fnlb.workers import Supervisor, WorkerStartError
from tests.helpers import sample
from tests.test_workers_e2e import _gone


def _script(path: Path, body: str) -> str:
    """An executable that stands in for the Python the supervisor starts workers with."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _supervisor(python: str, port: int, **kw: object) -> Supervisor:
    # --workers needs a fixed port (the workers share it through SO_REUSEPORT):
    # fixed_port keeps it ours for the test, for the workers that do start.
    listen = f"127.0.0.1:{port}"
    cfg = LBConfig(listen=listen, metrics_listen="", admin_listen="",
                   runners=("127.0.0.1:1",), workers=2, drain_grace=5)
    args = ["--listen", listen, "--metrics-listen", "", "--admin-listen", "",
            "--runners", "127.0.0.1:1", "--log-level", "warning"]
    return Supervisor(cfg, args, python=python, **kw)  # type: ignore[arg-type]


def _left_behind(sup: Supervisor) -> list[str]:
    """Worker processes still there, and the private directory if it is."""
    left = [f"pid {w.proc.pid}" for w in sup._workers
            if w.proc is not None and not _gone(w.proc.pid)]
    return left + [sup._dir] * os.path.exists(sup._dir)


async def test_a_worker_that_never_gets_ready_is_killed_and_named(tmp_path: Path,
                                                                  fixed_port: int) -> None:
    sup = _supervisor(_script(tmp_path / "py", "exec sleep 30"), fixed_port, ready_timeout=0.3)
    with pytest.raises(WorkerStartError, match=r"worker \d was not ready within 0.3s; killed it"):
        await sup.start()
    assert _left_behind(sup) == []


async def test_cancelling_the_start_leaves_no_worker_and_no_directory(tmp_path: Path,
                                                                      fixed_port: int) -> None:
    # What a SIGTERM while the workers start does (the CLI cancels start()).
    sup = _supervisor(_script(tmp_path / "py", "exec sleep 30"), fixed_port)
    starting = asyncio.ensure_future(sup.start())
    await wait_until(lambda: len(sup.pids()) == 2, 10, "both workers started")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert _left_behind(sup) == []


@pytest.mark.slow
async def test_a_worker_that_keeps_failing_to_start_stops_the_supervisor(
        tmp_path: Path, fixed_port: int) -> None:
    broken = tmp_path / "broken"
    python = _script(tmp_path / "py", f'[ -e {broken} ] && {{ echo "worker: bad certificate" >&2;'
                                      f' exit 3; }}\nexec {sys.executable} "$@"')
    sup = _supervisor(python, fixed_port, restart_backoff=(0.01, 0.05), max_start_failures=3)
    await sup.start()
    try:
        broken.touch()  # from now on a worker cannot start, as after a bad certificate change
        os.kill(sup.pids()[0], signal.SIGKILL)
        await asyncio.wait_for(sup.wait_closed(), 30)
    finally:
        await sup.stop(0)
    assert sup.error.startswith("worker 0 failed to start 3 times in a row; last: worker 0 "
                                "exited with code 3 before it was ready"), sup.error
    assert sample(sup.metrics, "fnlb_worker_restarts_total", {"worker": "0"}) == 3
    assert sample(sup.metrics, "fnlb_worker_restarts_total", {"worker": "1"}) == 0
    assert _left_behind(sup) == []
    # Worker 1 was drained, not killed.
    assert [w.returncode for w in sup._workers][1] == 0
