"""Network namespaces for fault tests: a process behind a veth pair that can be cut off.

Test and benchmark infrastructure next to ``fnlb.harness`` (Linux, root, ``ip``
and ``iptables``). A ``NetNs`` is a namespace joined to the root namespace by a
veth pair on a private /30 (``10.213.a.b``; the root side is ``.1``/``.5``/...,
the namespace side the next address), so a process started in it is reachable
from here at ``ns.ns_ip`` and can be cut off without touching anything else::

    with netns() as ns:
        stub = ns.start("runner_stub", ["--listen", f"{ns.ns_ip}:0"])
        ns.partition()   # iptables DROP both ways: packets vanish, nothing is refused
        ns.heal()
        ns.link_down()   # the namespace side of the veth down
        ns.link_up()

Cleanup always happens: ``close()`` (also on ``with`` exit and at interpreter
exit) stops the processes started in it, deletes the veth and the namespace.
A run that was killed leaves its namespace behind; the next one deletes it.
Which slot (name and subnet) is whose is decided by an ``flock`` on
``/run/fnlb-netns/<slot>.lock``: held while a ``NetNs`` lives, released by the
kernel when its process dies. So concurrent runs never share a slot, and a
namespace whose lock nobody holds is a leftover, safe to delete.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from fnlb.harness import LISTENING, Proc

__all__ = ["NetNs", "PREFIX", "cleanup_stale", "netns", "unavailable"]

PREFIX = "fnlbc"  # namespaces are PREFIX-<slot>, veths PREFIX<slot>h / PREFIX<slot>n
_SLOTS = 256  # 10.213.0.0/22 in /30s
_LOCK_DIR = Path("/run/fnlb-netns")
_live: set[NetNs] = set()
_swept = False


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def unavailable() -> str | None:
    """Why namespaces cannot be used here (a skip reason), or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: apt-get install iproute2 iptables)"
    return None


def _slot_ips(slot: int) -> tuple[str, str]:
    base = slot * 4
    prefix = f"10.213.{base // 256}."
    return prefix + str(base % 256 + 1), prefix + str(base % 256 + 2)


def _lock(slot: int) -> IO[bytes] | None:
    """The slot's lock file, locked by us; None if someone alive holds it."""
    _LOCK_DIR.mkdir(parents=True, exist_ok=True)
    f = open(_LOCK_DIR / f"{slot}.lock", "ab")  # noqa: SIM115 - held for the NetNs' life
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _delete_slot(slot: int) -> None:
    """Remove whatever slot ``slot`` left behind (its lock must be ours)."""
    name = f"{PREFIX}-{slot}"
    if name in _namespaces():
        # Processes still in it (started in a session of their own) outlive
        # their test run; the namespace is not freed while they live.
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    # Deleting one end deletes both, at once; deleting the namespace alone
    # frees its end (and so ours) only later, racing the next user of the slot.
    _run("ip", "link", "del", f"{PREFIX}{slot}h", check=False)
    _run("ip", "netns", "del", name, check=False)


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _slot_of(name: str) -> int | None:
    rest = name.removeprefix(PREFIX).removeprefix("-").rstrip("hn")
    return int(rest) if name.startswith(PREFIX) and rest.isdigit() else None


def cleanup_stale() -> list[int]:
    """Delete namespaces and veths that runs which died left behind; the slots freed."""
    links = _run("ip", "-o", "link", "show", check=False).stdout
    names = _namespaces() + [line.split(":")[1].strip().split("@")[0]
                             for line in links.splitlines() if line.count(":") >= 2]
    freed: list[int] = []
    for slot in sorted({s for s in map(_slot_of, names) if s is not None}):
        lock = _lock(slot)
        if lock is None:
            continue  # a live run's
        try:
            _delete_slot(slot)
            freed.append(slot)
        finally:
            lock.close()
    return freed


class NetNs:
    """One namespace + veth pair; see the module docstring. Use ``netns()`` or ``with``."""

    def __init__(self) -> None:
        self.slot = -1
        self.name = ""
        self.host_ip = ""
        self.ns_ip = ""
        self.veth_host = ""
        self.veth_ns = ""
        self.procs: list[Proc] = []
        self.partitioned = False
        self._lock: IO[bytes] | None = None

    def create(self) -> NetNs:
        global _swept
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        if not _swept:
            cleanup_stale()
            _swept = True
        for slot in range(_SLOTS):
            lock = _lock(slot)
            if lock is not None:
                break
        else:
            raise RuntimeError(f"all {_SLOTS} namespace slots are taken")
        self._lock, self.slot = lock, slot
        self.name = f"{PREFIX}-{slot}"
        self.veth_host, self.veth_ns = f"{PREFIX}{slot}h", f"{PREFIX}{slot}n"
        self.host_ip, self.ns_ip = _slot_ips(slot)
        _live.add(self)
        try:
            _delete_slot(slot)  # a dead run's leftovers in this slot
            _run("ip", "netns", "add", self.name)
            _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name",
                 self.veth_ns)
            _run("ip", "link", "set", self.veth_ns, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
            _run("ip", "link", "set", self.veth_host, "up")
            self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.veth_ns)
            self.exec("ip", "link", "set", self.veth_ns, "up")
            self.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace and wait for it."""
        return _run("ip", "netns", "exec", self.name, *argv, check=check)

    # -- processes ------------------------------------------------------------

    def spawn(self, module: str, args: Sequence[str], env: dict[str, str] | None = None, *,
              name: str = "") -> Proc:
        """``python -m module args`` in the namespace, as ``fnlb.harness.spawn`` starts it.

        ``ip netns exec`` execs the command, so ``Proc.pid`` and its signals are Python's.
        """
        argv = ["ip", "netns", "exec", self.name, sys.executable, "-m", module, *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=full_env, start_new_session=True)
        proc = Proc(name or f"{module}@{self.name}", argv, popen)
        self.procs.append(proc)
        return proc

    def start(self, module: str, args: Sequence[str], env: dict[str, str] | None = None,
              ready: str = LISTENING, *, name: str = "", timeout: float = 30.0) -> Proc:
        return self.spawn(module, args, env, name=name).wait_ready(ready, timeout)

    # -- faults -----------------------------------------------------------------

    def _rules(self, action: str) -> None:
        self.exec("iptables", "-w", action, "INPUT", "-i", self.veth_ns, "-j", "DROP")
        self.exec("iptables", "-w", action, "OUTPUT", "-o", self.veth_ns, "-j", "DROP")

    def partition(self) -> None:
        """Drop every packet on the veth, both ways: the peer sees silence, not refusals."""
        if not self.partitioned:
            self._rules("-A")
            self.partitioned = True

    def heal(self) -> None:
        if self.partitioned:
            self._rules("-D")
            self.partitioned = False

    def link_down(self) -> None:
        """Take the namespace's end of the veth down (the root end loses its carrier)."""
        self.exec("ip", "link", "set", self.veth_ns, "down")

    def link_up(self) -> None:
        self.exec("ip", "link", "set", self.veth_ns, "up")

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Stop the processes, delete the veth and the namespace; safe to call twice."""
        while self.procs:
            proc = self.procs.pop()
            with contextlib.suppress(Exception):
                proc.stop(5, drain=False)
        if self._lock is not None:
            try:
                _delete_slot(self.slot)
            finally:
                self._lock.close()
                self._lock = None
        _live.discard(self)

    def __enter__(self) -> NetNs:
        return self if self._lock is not None else self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def netns() -> Iterator[NetNs]:
    """A fresh namespace for the block, always deleted after it."""
    with NetNs() as ns:
        yield ns


@atexit.register
def _close_all() -> None:
    for ns in list(_live):
        with contextlib.suppress(Exception):
            ns.close()
