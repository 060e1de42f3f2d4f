"""fnlb._netns: a runner stub in a network namespace, cut off and back, always cleaned up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from bench._chaos import runner_status
from fnlb import _netns

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

_reason = _netns.unavailable()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent died is dead, whoever reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _reachable(addr: str) -> bool:
    try:
        await runner_status(addr, timeout=1.0)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e  # silence, not a refusal
        return False
    return True


async def _reachable_again(addr: str, within: float = 15.0) -> bool:
    """Reachable once more within ``within`` s (a bound that only catches a hang:
    on a loaded machine one try may outlast a 1 s timeout)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await _reachable(addr):
        if asyncio.get_running_loop().time() > deadline:
            return False
    return True


async def test_partition_and_link_down_cut_a_stub_off_until_undone() -> None:
    with _netns.netns() as ns:
        stub = ns.start("runner_stub", ["--listen", f"{ns.ns_ip}:0"])
        assert stub.addr.startswith(ns.ns_ip + ":")
        assert await _reachable(stub.addr)
        ns.partition()
        assert not await _reachable(stub.addr)
        ns.heal()
        assert await _reachable_again(stub.addr)
        ns.link_down()
        assert not await _reachable(stub.addr)
        ns.link_up()
        assert await _reachable_again(stub.addr)
        name, veth, pid = ns.name, ns.veth_host, stub.pid
    assert name not in _namespaces().split()
    assert veth not in _links()
    assert stub.popen.poll() is not None and not _alive(pid)


def test_a_killed_runs_leftovers_are_deleted_by_the_next() -> None:
    # A run killed outright leaves its namespace, veth and stub behind.
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal
        from fnlb._netns import NetNs
        ns = NetNs().create()
        stub = ns.start("runner_stub", ["--listen", f"{ns.ns_ip}:0"])
        print(ns.slot, ns.name, ns.veth_host, stub.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """)], capture_output=True, text=True, timeout=60)
    _, name, veth, pid = child.stdout.split()
    try:
        assert name in _namespaces().split() and veth in _links() and _alive(int(pid))
        _netns.cleanup_stale()  # (or a concurrent run's first NetNs, which sweeps too)
        assert name not in _namespaces().split()
        assert veth not in _links()
        assert not _alive(int(pid))
    finally:
        _netns.cleanup_stale()


def test_a_live_namespace_is_not_taken_for_stale() -> None:
    with _netns.netns() as ns:
        assert ns.slot not in _netns.cleanup_stale()
        assert ns.name in _namespaces().split()
        with _netns.netns() as other:
            assert other.slot != ns.slot and other.ns_ip != ns.ns_ip
