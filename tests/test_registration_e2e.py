"""Runners that register themselves with the LB (runner-stub --register-with)."""

from __future__ import annotations

import grpc
import pytest

from fnlb.harness import running, wait_until
from fnlb.v1 import lb_pb2, lb_pb2_grpc

pytestmark = pytest.mark.slow


async def _listed(admin: str) -> set[str]:
    async with grpc.aio.insecure_channel(admin) as ch:
        resp = await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
    return {r.address for r in resp.runners}


async def test_self_registered_runner_serves_and_expires_when_silent() -> None:
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                          "--admin-listen", "127.0.0.1:0", "--discovery", "registration",
                          "--placer-timeout", "2s"]) as front:
        admin = front.fields["admin_addr"]
        with running("runner_stub", ["--listen", "127.0.0.1:0", "--register-with", admin,
                                     "--register-ttl", "1s"]) as runner:
            runner.wait_for_line("registered with LB")

            async def present() -> bool:
                return runner.addr in await _listed(admin)

            await wait_until(present, 15, "registration")
            async with grpc.aio.insecure_channel(front.addr) as ch:
                resp = await lb_pb2_grpc.LoadBalancerStub(ch).Invoke(
                    lb_pb2.InvokeRequest(fn_id="f", body=b"reg"), timeout=10)
            assert resp.runner == runner.addr and resp.body == b"reg"
            # A silent runner (killed: no deregistration, no heartbeat) expires.
            runner.popen.kill()
            runner.wait()

            async def gone() -> bool:
                return runner.addr not in await _listed(admin)

            await wait_until(gone, 15, "expiry of the silent runner")
