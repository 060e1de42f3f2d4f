"""fnlb.v1.Admin on its own port: list/add/remove/drain, self-registration, mTLS, `fnlb runners`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fnlb.admin import peer_host
from fnlb.config import LBConfig, TLSPaths
from fnlb.harness import wait_until
from fnlb.metrics import Metrics
from fnlb.pools.health import HealthConfig
from fnlb.runnerside import register_loop
from fnlb.server import LBServer
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from tests.test_pools import FakeFactory


@contextlib.asynccontextmanager
async def lb_server(**overrides: object) -> AsyncIterator[tuple[LBServer, FakeFactory]]:
    factory = FakeFactory()
    cfg = LBConfig(**{"listen": "127.0.0.1:0", "metrics_listen": "", "admin_listen": "127.0.0.1:0",
                      "runners": ("127.0.0.1:9001",),
                      "health": HealthConfig(interval=0.05, slow_start=0), **overrides})
    async with LBServer(cfg, metrics=Metrics(), runner_factory=factory) as lb:
        yield lb, factory


@contextlib.asynccontextmanager
async def admin(lb: LBServer) -> AsyncIterator[lb_pb2_grpc.AdminStub]:
    async with grpc.aio.insecure_channel(lb.admin_address) as ch:
        yield lb_pb2_grpc.AdminStub(ch)


async def listed(stub: lb_pb2_grpc.AdminStub) -> dict[str, lb_pb2.RunnerInfo]:
    resp = await stub.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
    return {r.address: r for r in resp.runners}


async def test_list_add_remove_drain() -> None:
    async with lb_server() as (lb, factory), admin(lb) as stub:
        assert lb.admin_address and lb.admin_address != lb.address
        runners = await wait_until(lambda: _healthy(stub, "127.0.0.1:9001"), 5, "first probe")
        r = runners["127.0.0.1:9001"]
        assert (r.source, r.slots_total, r.last_status_at != "") == ("static", 4, True)
        add = await stub.AddRunner(lb_pb2.AddRunnerRequest(address="127.0.0.1:9002"), timeout=5)
        assert add.added
        again = await stub.AddRunner(lb_pb2.AddRunnerRequest(address="127.0.0.1:9002"), timeout=5)
        assert not again.added
        assert (await listed(stub))["127.0.0.1:9002"].source == "admin"
        # Unspecified host: the caller's address is used (a runner bound to 0.0.0.0).
        await stub.AddRunner(lb_pb2.AddRunnerRequest(address="0.0.0.0:9003"), timeout=5)
        assert "127.0.0.1:9003" in await listed(stub)
        for req, code, needle in (
                (lb_pb2.AddRunnerRequest(address="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                 "HOST:PORT"),
                (lb_pb2.AddRunnerRequest(address="127.0.0.1:1", ttl_s=-1),
                 grpc.StatusCode.INVALID_ARGUMENT, "ttl_s")):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.AddRunner(req, timeout=5)
            assert e.value.code() == code and needle in (e.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9001"),
                                    timeout=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "static" in (e.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:7"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        rm = await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9002"),
                                     timeout=5)
        assert rm.removed and "127.0.0.1:9002" not in await listed(stub)
        await wait_until(lambda: factory.last("127.0.0.1:9002").closed, 5, "channel closed")
        drained = await stub.DrainRunner(lb_pb2.DrainRunnerRequest(address="127.0.0.1:9001"),
                                         timeout=5)
        assert drained.draining and factory.last("127.0.0.1:9001").drained
        assert (await listed(stub))["127.0.0.1:9001"].state == "draining"
        assert [r.address for r in lb.pool.snapshot()] == ["127.0.0.1:9003"]  # type: ignore[union-attr]


async def _healthy(stub: lb_pb2_grpc.AdminStub,
                   address: str) -> dict[str, lb_pb2.RunnerInfo] | None:
    runners = await listed(stub)
    return runners if address in runners and runners[address].state == "healthy" else None


async def test_admin_is_not_on_the_front_port_and_has_health() -> None:
    async with lb_server() as (lb, _):
        async with grpc.aio.insecure_channel(lb.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(lb.admin_address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            resp = await health.Check(health_pb2.HealthCheckRequest(service="fnlb.v1.Admin"),
                                      timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    async with lb_server(admin_listen="") as (lb, _):
        assert lb.admin_address == ""


async def test_registration_heartbeat_and_expiry() -> None:
    async with lb_server() as (lb, factory), admin(lb) as stub:
        stop = asyncio.Event()
        task = asyncio.create_task(register_loop(lb.admin_address, "0.0.0.0:9010", 1, stop))
        info = await wait_until(lambda: _present(stub, "127.0.0.1:9010"), 5, "registration")
        assert info.source == "registered"
        stop.set()
        await asyncio.wait_for(task, 5)  # a clean stop deregisters at once
        assert "127.0.0.1:9010" not in await listed(stub)
        # A runner that goes silent (crash: no deregistration) expires with its TTL.
        stop = asyncio.Event()
        task = asyncio.create_task(register_loop(lb.admin_address, "127.0.0.1:9011", 1, stop))
        await wait_until(lambda: _present(stub, "127.0.0.1:9011"), 5, "registration")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await wait_until(lambda: _absent(stub, "127.0.0.1:9011"), 3, "registration to expire")
        await wait_until(lambda: factory.last("127.0.0.1:9011").closed, 3, "channel closed")


async def test_registration_retries_until_the_lb_is_up(
        fixed_port: int, caplog: pytest.LogCaptureFixture) -> None:
    # The LB starts after the runner, at an address known in advance: a port
    # reserved for the test, refused until the LB listens there.
    admin_addr = f"127.0.0.1:{fixed_port}"
    stop = asyncio.Event()
    task = asyncio.create_task(register_loop(admin_addr, "127.0.0.1:9012", 3, stop))
    try:
        with caplog.at_level(logging.WARNING, logger="fnlb.runnerside.registration"):
            await wait_until(lambda: any(r.getMessage() == "registration failed, retrying"
                                         for r in caplog.records), 10, "a failed registration")
        assert not task.done()  # it failed and keeps trying, without raising
        # A connection of its own: a shared one would still be in the loop's
        # reconnect back-off and fail at once.
        async with lb_server(admin_listen=admin_addr), grpc.aio.insecure_channel(
                admin_addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            info = await wait_until(lambda: _present(lb_pb2_grpc.AdminStub(ch), "127.0.0.1:9012"),
                                    15, "registration once the LB is up")
            assert info.source == "registered"
            stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _present(stub: lb_pb2_grpc.AdminStub, address: str) -> lb_pb2.RunnerInfo | None:
    return (await listed(stub)).get(address)


async def _absent(stub: lb_pb2_grpc.AdminStub, address: str) -> bool:
    return address not in await listed(stub)


async def test_fnlb_runners_cli_prints_the_table() -> None:
    async with lb_server() as (lb, _):
        await wait_until(lambda: lb.pool.views()[0].state == "healthy", 5)  # type: ignore[union-attr]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fnlb", "runners", "--lb", lb.admin_address,
            "--add", "127.0.0.1:9020", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        lines = out.decode().splitlines()
        assert lines[0] == "127.0.0.1:9020: added"
        assert lines[1].split()[:3] == ["ADDRESS", "STATE", "INFLIGHT"]
        row = next(line.split() for line in lines if line.startswith("127.0.0.1:9001"))
        assert row[1] == "healthy" and "static" in row
        assert lines[-1] == "2 runners; placer: naive"


async def test_admin_uses_front_door_mtls(tmp_path: Path) -> None:
    from fnlb.tls import init_ca, issue_cert

    init_ca(tmp_path / "ca")
    issue_cert(tmp_path / "ca", "lb", ["127.0.0.1"], tmp_path / "certs")
    issue_cert(tmp_path / "ca", "op", ["op.test"], tmp_path / "certs")
    certs = tmp_path / "certs"
    tls = TLSPaths(certs / "lb.crt", certs / "lb.key", tmp_path / "ca" / "ca.crt")
    async with lb_server(front_tls=tls, admin_allow=("op",)) as (lb, _):
        ca = (tmp_path / "ca" / "ca.crt").read_bytes()
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(lb.admin_address, no_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=(certs / "op.key").read_bytes(),
            certificate_chain=(certs / "op.crt").read_bytes())
        async with grpc.aio.secure_channel(lb.admin_address, with_cert) as ch:
            resp = await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(),
                                                               timeout=5)
            assert [r.address for r in resp.runners] == ["127.0.0.1:9001"]


def test_peer_host() -> None:
    assert peer_host("ipv4:10.0.0.5:4242") == "10.0.0.5"
    assert peer_host("ipv6:[::1]:4242") == "[::1]"
    assert peer_host("ipv6:%5B::1%5D:4242") == "[::1]"
    assert peer_host("unix:/tmp/x") is None
