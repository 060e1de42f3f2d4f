"""`fnlb serve --workers 2` end to end: real supervisor, workers and runner stubs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fnlb.harness import Proc, parse_logfmt, reserved_port, running, running_stubs, wait_until
from fnlb.v1 import lb_pb2, lb_pb2_grpc

pytestmark = pytest.mark.slow

# One HTTP/2 connection stays on one worker; grpc shares a connection between
# channels to the same target unless each keeps its own subchannel pool.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@contextlib.contextmanager
def supervisor(runners: Sequence[str], *args: str) -> Iterator[Proc]:
    # --workers needs a fixed port: the workers share it through SO_REUSEPORT
    # (port 0 would give each its own). It stays reserved while the supervisor
    # lives, so no other process takes it before, or between, the workers' binds.
    with reserved_port() as port, running("fnlb", [
            "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--runners", ",".join(runners), "--drain-grace", "10s",
            "--health-interval", "200ms", *args]) as p:
        yield p


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proc: Proc) -> Samples:
    with urllib.request.urlopen(f"http://{proc.fields['metrics_addr']}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def per_worker(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """``name`` summed per worker over the samples that carry ``labels``."""
    out: dict[str, float] = {}
    for (n, lbls), value in samples.items():
        d = dict(lbls)
        if n == name and all(d.get(k) == v for k, v in labels.items()):
            out[d["worker"]] = out.get(d["worker"], 0.0) + value
    return out


async def invoke(addr: str, n: int = 1, **config: str) -> list[lb_pb2.InvokeResponse]:
    async with grpc.aio.insecure_channel(addr, options=_OWN_CONNECTION) as ch:
        stub = lb_pb2_grpc.LoadBalancerStub(ch)
        return list(await asyncio.gather(*(
            stub.Invoke(lb_pb2.InvokeRequest(fn_id="f", body=b"hi", config=config), timeout=10)
            for _ in range(n))))


async def admin_call(proc: Proc, method: str, request: object) -> object:
    async with grpc.aio.insecure_channel(proc.fields["admin_addr"]) as ch:
        return await getattr(lb_pb2_grpc.AdminStub(ch), method)(request, timeout=10)


def private_dir_left(proc: Proc) -> bool:
    """The supervisor's 0700 directory of worker sockets (named in a worker's log line) exists."""
    line = proc.wait_for_line(r'msg="worker listening"')
    return os.path.exists(os.path.dirname(parse_logfmt(line)["admin_addr"].removeprefix("unix:")))


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[list[Proc], Proc]]:
    with running_stubs(2, ["--slots", "8"]) as stubs, supervisor([stubs[0].addr]) as sup:
        yield stubs, sup


async def test_both_workers_serve_calls_and_metrics_merge(
        cluster: tuple[list[Proc], Proc]) -> None:
    stubs, sup = cluster
    assert sup.fields["workers"] == "2"

    async def both_served() -> bool:
        # Connections, not calls, are spread: a new connection each round.
        resps = await asyncio.gather(*(invoke(sup.addr, 4) for _ in range(4)))
        assert all(r.body == b"hi" and r.runner == stubs[0].addr for rs in resps for r in rs)
        calls = per_worker(scrape(sup), "fnlb_calls_total", type="sync")
        return calls.get("0", 0) > 0 and calls.get("1", 0) > 0

    await wait_until(both_served, 15, "calls on both workers")
    samples = scrape(sup)
    names = {n for n, _ in samples}
    for name in ("fnlb_call_latency_seconds_count", "fnlb_placer_attempts_bucket",
                 "fnlb_placer_placed_total", "fnlb_pool_runners", "fnlb_calls_inflight",
                 "fnlb_worker_restarts_total", "fnlb_worker_up", "fnlb_workers"):
        assert name in names, name
    own = {"fnlb_workers"}
    assert all("worker" in dict(lbls) for n, lbls in samples if n not in own)
    assert per_worker(samples, "fnlb_worker_up") == {"0": 1.0, "1": 1.0}
    placed = per_worker(samples, "fnlb_placer_placed_total", result="ok")
    calls = per_worker(samples, "fnlb_calls_total", type="sync")
    assert placed == calls and sum(calls.values()) >= 16

    # SIGHUP (certificate reload) is passed on; it stops nobody.
    start = len(sup.lines)
    sup.signal(signal.SIGHUP)
    sup.wait_for_line(f'passing SIGHUP to the workers" workers={sup.fields["pids"]}', start=start)
    assert len(await invoke(sup.addr, 2)) == 2
    assert not any(_gone(int(pid)) for pid in sup.fields["pids"].split(","))
    assert per_worker(scrape(sup), "fnlb_worker_restarts_total") == {"0": 0.0, "1": 0.0}


def test_a_second_lb_on_the_port_fails_clearly(cluster: tuple[list[Proc], Proc]) -> None:
    _, sup = cluster
    for extra in ([], ["--workers", "2"]):
        r = subprocess.run([sys.executable, "-m", "fnlb", "serve", "--listen", sup.addr,
                            "--metrics-listen", "", "--admin-listen", "", "--runners",
                            "127.0.0.1:1", *extra], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"--listen {sup.addr}: cannot bind (address in use" in r.stderr


async def test_admin_reaches_every_worker_and_a_killed_worker_comes_back(
        cluster: tuple[list[Proc], Proc]) -> None:
    stubs, sup = cluster
    added = await admin_call(sup, "AddRunner", lb_pb2.AddRunnerRequest(address=stubs[1].addr))
    assert added.added  # type: ignore[attr-defined]
    listed = await admin_call(sup, "ListRunners", lb_pb2.ListRunnersRequest())
    rows = {r.address: r for r in listed.runners}  # type: ignore[attr-defined]
    assert rows.keys() == {stubs[0].addr, stubs[1].addr}
    assert rows[stubs[1].addr].source == "admin"

    def pools_of_two() -> bool:
        return per_worker(scrape(sup), "fnlb_pool_runners") == {"0": 2.0, "1": 2.0}

    await wait_until(pools_of_two, 10, "the added runner in both workers' pools")

    async def used(addr: str) -> bool:
        resps = await asyncio.gather(*(invoke(sup.addr, 2) for _ in range(4)))
        return any(r.runner == addr for rs in resps for r in rs)

    await wait_until(lambda: used(stubs[1].addr), 10, "calls on the added runner")

    victim = int(sup.fields["pids"].split(",")[0])
    start = len(sup.lines)
    os.kill(victim, signal.SIGKILL)
    sup.wait_for_line(r"worker exited unexpectedly.*worker=0", start=start)
    sup.wait_for_line(r'msg="worker ready" worker=0', start=start)

    def restarted() -> bool:
        s = scrape(sup)
        return (per_worker(s, "fnlb_worker_restarts_total").get("0") == 1
                and per_worker(s, "fnlb_worker_up") == {"0": 1.0, "1": 1.0})

    await wait_until(restarted, 10, "worker 0 restarted")
    # The new worker 0 got the Admin-added runner back from the supervisor.
    await wait_until(pools_of_two, 10, "the added runner replayed to the new worker")
    for _ in range(4):
        assert [r.body for r in await invoke(sup.addr, 2)] == [b"hi", b"hi"]


async def test_sigterm_drains_every_worker_and_leaves_no_process() -> None:
    with running_stubs(1) as stubs, supervisor([stubs[0].addr]) as sup:
        pids = [int(p) for p in sup.fields["pids"].split(",")]
        call = asyncio.ensure_future(invoke(sup.addr, 1, sleep_ms="800"))

        def inflight() -> bool:
            return sum(per_worker(scrape(sup), "fnlb_calls_inflight").values()) == 1

        await wait_until(inflight, 10, "a call in flight")
        sup.signal(signal.SIGTERM)
        (resp,) = await call
        assert resp.body == b"hi"
        assert sup.wait(20) == 0
        assert all(_gone(pid) for pid in pids)
        assert not private_dir_left(sup)


async def test_workers_outlive_no_killed_supervisor() -> None:
    with running_stubs(1) as stubs, supervisor([stubs[0].addr]) as sup:
        pids = [int(p) for p in sup.fields["pids"].split(",")]
        sup.popen.kill()
        sup.wait(10)
        # Each worker sees its end of the socketpair close, drains and exits;
        # the last one out removes the private directory.
        await wait_until(lambda: all(_gone(pid) for pid in pids), 15, "workers to exit")
        assert not private_dir_left(sup)
