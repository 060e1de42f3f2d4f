"""`fnlb serve --workers N`, in process: merged metrics, the fan-out Admin, bad flags."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fnlb._admin_fanout import AdminLedger, FanOutAdminServicer, merge_runner_infos
from fnlb.config import LBConfig
from fnlb.errors import ConfigError
from fnlb.harness import wait_until
from fnlb.metrics import Metrics, WorkerMetricsCollector
from fnlb.pools.health import HealthConfig
from fnlb.server import LBServer, serve_admin
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from tests.test_pools import FakeFactory

# -- merged metrics ---------------------------------------------------------------


def test_merged_metrics_keep_every_name_and_type_and_add_a_worker_label() -> None:
    workers = [Metrics(), Metrics()]
    workers[0].calls_by_type["sync"].inc(3)
    workers[1].calls_by_type["sync"].inc(5)
    workers[1].call_latency_by["completed"].observe(0.02)
    workers[0].calls_inflight.set(2)
    collector = WorkerMetricsCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.update({i: m.render().decode() for i, m in enumerate(workers)})
    merged = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    single = {f.name: f for f in text_string_to_metric_families(workers[0].render().decode())}
    assert merged.keys() == single.keys()
    assert all(merged[n].type == single[n].type for n in single)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in merged.values() for s in f.samples}
    assert samples[("fnlb_calls_total", (("type", "sync"), ("worker", "0")))] == 3
    assert samples[("fnlb_calls_total", (("type", "sync"), ("worker", "1")))] == 5
    assert samples[("fnlb_calls_inflight", (("worker", "0"),))] == 2
    assert samples[("fnlb_call_latency_seconds_count",
                    (("call_status", "completed"), ("worker", "1")))] == 1
    assert all("worker" in s.labels for f in merged.values() for s in f.samples)
    # A worker that did not answer this scrape is simply absent.
    collector.update({1: workers[1].render().decode()})
    text = generate_latest(registry).decode()
    assert 'worker="1"' in text and 'worker="0"' not in text


# -- ListRunners merge and the ledger ---------------------------------------------------


def test_merge_runner_infos_sums_lb_counts_and_keeps_the_freshest_report() -> None:
    a = lb_pb2.RunnerInfo(address="r:1", state="healthy", inflight=2, placed=10, source="static",
                          runner_active=1, slots_total=4, slots_free=3,
                          last_status_at="2026-01-01T00:00:01.000Z")
    b = lb_pb2.RunnerInfo(address="r:1", state="ejected", inflight=1, placed=5, source="static",
                          runner_active=4, slots_total=4, slots_free=0,
                          last_status_at="2026-01-01T00:00:02.000Z",
                          consecutive_failures=3, last_error="boom")
    c = lb_pb2.RunnerInfo(address="r:2", state="healthy", source="admin")
    (one, two) = merge_runner_infos([[a, c], [b]])
    assert (one.address, one.inflight, one.placed) == ("r:1", 3, 15)
    assert (one.runner_active, one.slots_free, one.last_status_at) == (
        4, 0, "2026-01-01T00:00:02.000Z")
    assert (one.state, one.consecutive_failures, one.last_error) == ("ejected", 3, "boom")
    assert two == c


def test_ledger_replays_adds_until_removed_or_expired() -> None:
    now = [100.0]
    ledger = AdminLedger(clock=lambda: now[0])
    ledger.added("r:1", 0)
    ledger.added("r:2", 10)
    ledger.drained("r:3")
    assert [(r.address, r.ttl_s) for r in ledger.adds()] == [("r:1", 0), ("r:2", 10)]
    now[0] += 4.5
    assert [(r.address, r.ttl_s) for r in ledger.adds()] == [("r:1", 0), ("r:2", 6)]
    now[0] += 6
    assert [r.address for r in ledger.adds()] == ["r:1"] and not ledger.holds("r:2")
    ledger.removed("r:1")
    assert ledger.adds() == [] and ledger.drains() == ["r:3"]


# -- the fan-out Admin in front of real LBServers ---------------------------------------


def _worker_cfg(tmp: Path, i: int) -> LBConfig:
    return LBConfig(listen="127.0.0.1:0", metrics_listen="", admin_listen="",
                    admin_unix=str(tmp / f"w{i}.sock"), runners=("127.0.0.1:9001",),
                    health=HealthConfig(interval=0.05, slow_start=0))


@contextlib.asynccontextmanager
async def _worker(tmp: Path, i: int) -> AsyncIterator[tuple[LBServer, lb_pb2_grpc.AdminStub]]:
    async with LBServer(_worker_cfg(tmp, i), metrics=Metrics(),
                        runner_factory=FakeFactory()) as lb, \
            grpc.aio.insecure_channel(f"unix:{tmp / f'w{i}.sock'}") as ch:
        yield lb, lb_pb2_grpc.AdminStub(ch)


def _addresses(lb: LBServer) -> dict[str, str]:
    return {v.address: v.state for v in lb.pool.views()}  # type: ignore[union-attr]


async def test_fan_out_admin_reaches_every_worker_and_replays_to_a_new_one(
        tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(_worker(tmp_path, i)) for i in range(2)]
        stubs = [(i, stub) for i, (_, stub) in enumerate(workers)]
        fan_out = FanOutAdminServicer(lambda: stubs, "naive")
        server, address = await serve_admin(fan_out, health.aio.HealthServicer(),
                                            "127.0.0.1:0", None)
        stack.push_async_callback(server.stop, 0)
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        admin = lb_pb2_grpc.AdminStub(ch)

        # An unspecified host is the caller's address, resolved before fanning out.
        added = await admin.AddRunner(lb_pb2.AddRunnerRequest(address="0.0.0.0:9002"), timeout=5)
        assert added.added
        assert all("127.0.0.1:9002" in _addresses(lb) for lb, _ in workers)
        again = await admin.AddRunner(lb_pb2.AddRunnerRequest(address="127.0.0.1:9002"),
                                      timeout=5)
        assert not again.added
        listed = (await admin.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)).runners
        assert [r.address for r in listed] == ["127.0.0.1:9001", "127.0.0.1:9002"]
        assert listed[1].source == "admin"

        for req, method, code in (
                (lb_pb2.AddRunnerRequest(address="nope"), admin.AddRunner,
                 grpc.StatusCode.INVALID_ARGUMENT),
                (lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9001"), admin.RemoveRunner,
                 grpc.StatusCode.FAILED_PRECONDITION),
                (lb_pb2.RemoveRunnerRequest(address="127.0.0.1:7"), admin.RemoveRunner,
                 grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await method(req, timeout=5)
            assert e.value.code() == code

        await admin.DrainRunner(lb_pb2.DrainRunnerRequest(address="127.0.0.1:9001"), timeout=5)
        assert all(_addresses(lb)["127.0.0.1:9001"] == "draining" for lb, _ in workers)

        # A restarted worker starts from its flags alone; the replay brings it level.
        async with _worker(tmp_path, 2) as (fresh, fresh_stub):
            assert "127.0.0.1:9002" not in _addresses(fresh)
            await fan_out.replay(2, fresh_stub)
            assert "127.0.0.1:9002" in _addresses(fresh)
            assert _addresses(fresh)["127.0.0.1:9001"] == "draining"

        removed = await admin.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9002"),
                                           timeout=5)
        assert removed.removed and not fan_out.ledger.holds("127.0.0.1:9002")
        await wait_until(lambda: all("127.0.0.1:9002" not in _addresses(lb)
                                     for lb, _ in workers), 5, "removal everywhere")


class _GatedAdd:
    """An Admin stub whose AddRunner waits for ``gate`` before it reaches the worker."""

    def __init__(self, stub: lb_pb2_grpc.AdminStub) -> None:
        self._stub = stub
        self.gate = asyncio.Event()
        self.add_sent = asyncio.Event()

    async def AddRunner(self, req: lb_pb2.AddRunnerRequest,  # the gRPC method name
                        timeout: float) -> lb_pb2.AddRunnerResponse:
        self.add_sent.set()
        await self.gate.wait()
        return await self._stub.AddRunner(req, timeout=timeout)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stub, name)


async def test_a_removal_during_the_replay_is_not_undone_by_it(tmp_path: Path) -> None:
    fan_out = FanOutAdminServicer(lambda: [], "naive")
    fan_out.ledger.added("127.0.0.1:9002", 0)
    async with _worker(tmp_path, 0) as (lb, stub):
        gated = _GatedAdd(stub)
        replay = asyncio.ensure_future(fan_out.replay(0, gated))
        await gated.add_sent.wait()
        # The fan-out's RemoveRunner reaches the worker first (nothing to remove
        # yet), then the replay's AddRunner lands.
        fan_out.ledger.removed("127.0.0.1:9002")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9002"),
                                    timeout=5)
        gated.gate.set()
        await replay
        assert "127.0.0.1:9002" not in _addresses(lb)


async def test_fan_out_admin_with_no_worker_up_is_unavailable() -> None:
    fan_out = FanOutAdminServicer(lambda: [], "naive")
    server, address = await serve_admin(fan_out, health.aio.HealthServicer(), "127.0.0.1:0", None)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(),
                                                            timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


# -- flags --------------------------------------------------------------------------


def test_workers_config_needs_a_fixed_port() -> None:
    with pytest.raises(ConfigError, match="--workers 2: --listen needs a fixed port"):
        LBConfig(listen="127.0.0.1:0", runners=("127.0.0.1:1",), workers=2)
    with pytest.raises(ConfigError, match="--workers"):
        LBConfig(runners=("127.0.0.1:1",), workers=0)
    assert LBConfig(listen="127.0.0.1:9999", workers=4).workers == 4


def test_bad_workers_values_fail_before_any_worker_starts() -> None:
    cases = ((["--workers", "0"], "argument --workers: must be > 0"),
             (["--workers", "abc"], "argument --workers: expected an integer"),
             (["--workers", "2", "--listen", "127.0.0.1:0"],
              "--workers 2: --listen needs a fixed port"))
    procs = [subprocess.Popen([sys.executable, "-m", "fnlb", "serve", "--runners", "127.0.0.1:1",
                               "--metrics-listen", "", "--admin-listen", "", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args, _ in cases]
    for proc, (_, needle) in zip(procs, cases, strict=True):
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, err
        assert needle in err, err
        assert "worker listening" not in err
