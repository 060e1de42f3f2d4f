"""Admin in process: bounded runner addresses, the fan-out's authorization, the workers'
private socket, config errors, and the certificate expiry watch."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health

from fnlb._admin_fanout import FanOutAdminServicer
from fnlb.authz import AdminPolicy
from fnlb.config import LBConfig, TLSPaths
from fnlb.errors import ConfigError
from fnlb.harness import wait_until
from fnlb.metrics import Metrics
from fnlb.pools.health import HealthConfig
from fnlb.server import LBServer, serve_admin
from fnlb.tls import CertExpiryWatch, TLSFiles, TLSMaterial, init_ca, issue_cert
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from tests.helpers import sample
from tests.test_admin import admin, lb_server, listed
from tests.test_pools import FakeFactory


async def _refused_with(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value
    return e.value.details() or ""


async def test_runner_addresses_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    label = "a" * 63
    longest = ".".join([label] * 3 + ["b" * 61])  # 253 bytes
    assert len(longest) == 253
    with caplog.at_level(logging.DEBUG):
        async with lb_server() as (lb, _), admin(lb) as stub:
            huge = "h" * (1 << 20) + ":9190"  # issue 14: 1 MiB host name
            details = await _refused_with(stub.AddRunner(
                lb_pb2.AddRunnerRequest(address=huge), timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "hhhh" not in details
            for address, says in (
                    ("x" * 300 + ":1", "address: 302 bytes; a runner address is HOST:PORT"),
                    (longest + "c:1", "address: host name must be at most 253 bytes"),
                    ("a" * 64 + ".example:1", "each dot-separated label at most 63"),
                    ("bad", "address: runner address 'bad' must be HOST:PORT")):
                details = await _refused_with(stub.AddRunner(
                    lb_pb2.AddRunnerRequest(address=address), timeout=5),
                    grpc.StatusCode.INVALID_ARGUMENT)
                assert details.startswith("address: ") and says in details, details
                assert "address: address:" not in details
            for method, req in (("RemoveRunner", lb_pb2.RemoveRunnerRequest(address="bad")),
                                ("DrainRunner", lb_pb2.DrainRunnerRequest(address="bad"))):
                details = await _refused_with(getattr(stub, method)(req, timeout=5),
                                              grpc.StatusCode.INVALID_ARGUMENT)
                assert details == "address: runner address 'bad' must be HOST:PORT"
            added = await stub.AddRunner(lb_pb2.AddRunnerRequest(address=f"{longest}:9"),
                                         timeout=5)
            assert added.added and f"{longest}:9" in await listed(stub)
    assert max(len(r.getMessage()) + len(str(getattr(r, "kv", ""))) for r in caplog.records) < 4096


class _Recording:
    """A worker's Admin stub that records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        async def answer(req: Any, timeout: float) -> Any:
            self.calls.append(method)
            return lb_pb2.ListRunnersResponse()

        class _Call:
            def __init__(self, req: Any, timeout: float) -> None:
                self._coro = answer(req, timeout)

            def __await__(self) -> Any:
                return self._coro.__await__()

            async def trailing_metadata(self) -> tuple[()]:
                return ()

        return _Call


async def test_fan_out_admin_authorizes_before_any_worker_sees_the_call() -> None:
    worker = _Recording()
    policy = AdminPolicy.from_flags(("ip:10.0.0.0/8",), (), client_ca=False)
    fan_out = FanOutAdminServicer(lambda: [(0, worker)], "naive", policy=policy)
    server, address = await serve_admin(fan_out, health.aio.HealthServicer(), "127.0.0.1:0", None)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = lb_pb2_grpc.AdminStub(ch)
            for call in (stub.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5),
                         stub.DrainRunner(lb_pb2.DrainRunnerRequest(address="10.0.0.1:9"),
                                          timeout=5),
                         stub.AddRunner(lb_pb2.AddRunnerRequest(address="127.0.0.1:9", ttl_s=5),
                                        timeout=5)):
                details = await _refused_with(call, grpc.StatusCode.PERMISSION_DENIED)
                assert "a caller without a client certificate from 127.0.0.1 is not in " \
                       "--admin-allow (ip:10.0.0.0/8)" in details, details
        assert worker.calls == []
        assert fan_out.ledger.adds() == [] and fan_out.ledger.drains() == []
    finally:
        await server.stop(0)
    # The default (no policy given): loopback callers, as `fnlb serve` without a CA.
    fan_out = FanOutAdminServicer(lambda: [(0, worker)], "naive")
    server, address = await serve_admin(fan_out, health.aio.HealthServicer(), "127.0.0.1:0", None)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
        assert worker.calls == ["ListRunners"]
    finally:
        await server.stop(0)


async def test_a_workers_private_socket_serves_the_supervisor_under_a_client_ca(
        tmp_path: Path) -> None:
    """With --front-tls-ca nobody may call Admin by default, but the supervisor (on the
    worker's unix socket, having authorized the caller itself) still may."""
    init_ca(tmp_path / "ca")
    issue_cert(tmp_path / "ca", "lb", ["127.0.0.1"], tmp_path)
    tls = TLSPaths(tmp_path / "lb.crt", tmp_path / "lb.key", tmp_path / "ca" / "ca.crt")
    sock = tmp_path / "w0.sock"
    cfg = LBConfig(listen="127.0.0.1:0", metrics_listen="", admin_listen="",
                   admin_unix=str(sock), runners=("127.0.0.1:9001",), front_tls=tls,
                   health=HealthConfig(interval=0.05, slow_start=0))
    async with LBServer(cfg, metrics=Metrics(), runner_factory=FakeFactory()), \
            grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        stub = lb_pb2_grpc.AdminStub(ch)
        assert "127.0.0.1:9001" in await listed(stub)
        await stub.DrainRunner(lb_pb2.DrainRunnerRequest(address="127.0.0.1:9001"), timeout=5)


def test_identity_rules_without_a_client_ca_are_startup_errors() -> None:
    with pytest.raises(ConfigError, match="--admin-allow admin: identities come from client"):
        LBConfig(admin_allow=("admin",))
    with pytest.raises(ConfigError, match="--register-allow self"):
        LBConfig(register_allow=("self",))
    with pytest.raises(ConfigError, match="--admin-allow: 'ip:nope'"):
        LBConfig(admin_allow=("ip:nope",))
    LBConfig(admin_allow=("loopback", "ip:10.0.0.0/8"))


# -- certificate expiry ---------------------------------------------------------------------

class _Holder:
    def __init__(self, material: TLSMaterial) -> None:
        self.material = material


def _material(tmp_path: Path, name: str, days: int) -> TLSMaterial:
    if not (tmp_path / "ca" / "ca.crt").exists():
        init_ca(tmp_path / "ca")
    crt, key = issue_cert(tmp_path / "ca", name, ["127.0.0.1"], tmp_path, days=days)
    return TLSFiles(crt, key, tmp_path / "ca" / "ca.crt").load()


def test_expiry_watch_logs_each_role_and_sets_the_gauge(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    front, soon = _material(tmp_path, "front", 90), _material(tmp_path, "soon", 3)
    now = [datetime.now(UTC).timestamp()]
    metrics = Metrics()
    watch = CertExpiryWatch({"front": _Holder(front), "runner_client": _Holder(soon),
                             "absent": None}, gauge=metrics.tls_cert_expiry,
                            clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="fnlb.tls"):
        watch.check()
        now[0] += 4 * 86400  # 4 days on: the runner certificate has expired
        watch.check()
    lines = [(r.levelname, getattr(r, "kv", {})["role"]) for r in caplog.records]
    assert lines == [
        ("INFO", "front"), ("WARNING", "runner_client"), ("INFO", "front"),
        ("ERROR", "runner_client")]
    left = sample(metrics, "fnlb_tls_cert_expiry_seconds", {"role": "runner_client"})
    assert left == pytest.approx(soon.not_after.timestamp() - now[0])
    assert left < 0
    assert sample(metrics, "fnlb_tls_cert_expiry_seconds", {"role": "front"}) == \
        pytest.approx(front.not_after.timestamp() - now[0])
    assert metrics.registry.get_sample_value("fnlb_tls_cert_expiry_seconds",
                                             {"role": "absent"}) is None


async def test_expiry_watch_checks_again_after_its_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = CertExpiryWatch({"front": _Holder(_material(tmp_path, "front", 90))},
                            interval=0.01)
    with caplog.at_level(logging.INFO, logger="fnlb.tls"):
        watch.start()
        assert len(caplog.records) == 1  # at once
        await wait_until(lambda: len(caplog.records) >= 3, 5, "two more daily checks")
        await watch.stop()
        await watch.stop()  # twice is fine
