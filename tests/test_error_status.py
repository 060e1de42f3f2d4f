"""Expected errors -> gRPC status: the table alone, then what clients of a real LB see."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from fnlb.config import LBConfig
from fnlb.error_status import grpc_status
from fnlb.errors import (
    ClientCanceled,
    ClientTimeout,
    ConfigError,
    FnlbError,
    InvalidRequest,
    PoolError,
    RunnerError,
    RunnerUnreachable,
    ServerTooBusy,
)
from fnlb.metrics import Metrics
from fnlb.pools import MembershipError, UnknownRunner
from fnlb.runnerpool import Attempt, PlacerConfig, RunnerCall
from fnlb.server import LBServer
from fnlb.tls import TLSConfigError
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from tests.fakes import FakePool, FakeRunner
from tests.test_admin import admin, lb_server

S = grpc.StatusCode


@pytest.mark.parametrize(("error", "code"), [
    (InvalidRequest("fn_id: required"), S.INVALID_ARGUMENT),
    (ServerTooBusy(), S.UNAVAILABLE),
    (ClientTimeout(), S.DEADLINE_EXCEEDED),
    (ClientCanceled(), S.CANCELLED),
    (RunnerUnreachable("down"), S.UNAVAILABLE),
    (PoolError("no runners yet"), S.UNAVAILABLE),
    (PoolError("bad", retryable=False), S.UNAVAILABLE),
    (MembershipError("comes from file"), S.FAILED_PRECONDITION),
    (UnknownRunner("not in the pool"), S.NOT_FOUND),
    (ConfigError("address: bad port"), S.INVALID_ARGUMENT),
    (TLSConfigError("key file k: not found"), S.INVALID_ARGUMENT),
    (FnlbError("not in the table"), S.INTERNAL),
    # A committed call the runner failed: by its error code, then by whose fault.
    (RunnerError("crashed"), S.UNAVAILABLE),
    (RunnerError("crashed", error_code=502), S.UNAVAILABLE),
    (RunnerError("function failed", error_code=500, user_error=True), S.UNKNOWN),
    (RunnerError("function timed out", error_code=504), S.DEADLINE_EXCEEDED),
    (RunnerError("function timed out", error_code=504, user_error=True), S.DEADLINE_EXCEEDED),
    (RunnerError("too much memory", error_code=400), S.INVALID_ARGUMENT),
    (RunnerError("body too big", error_code=413, user_error=True), S.INVALID_ARGUMENT),
])
def test_status_table(error: FnlbError | ConfigError, code: grpc.StatusCode) -> None:
    assert grpc_status(error) == code


def test_one_config_error_for_lb_tls_and_stub() -> None:
    import runner_stub.errors

    assert issubclass(TLSConfigError, ConfigError)
    assert runner_stub.errors.ConfigError is ConfigError


@contextlib.asynccontextmanager
async def front_door(pool: FakePool, placer_timeout: float = 360.0
                     ) -> AsyncIterator[lb_pb2_grpc.LoadBalancerStub]:
    cfg = LBConfig(listen="127.0.0.1:0", metrics_listen="", admin_listen="",
                   placer_config=PlacerConfig(0.001, placer_timeout, placer_timeout))
    async with LBServer(cfg, metrics=Metrics(), pool=pool) as lb, \
            grpc.aio.insecure_channel(lb.address) as ch:
        yield lb_pb2_grpc.LoadBalancerStub(ch)


def failing(error: RunnerError) -> FakeRunner:
    def run(call: RunnerCall) -> Attempt:
        return Attempt(True, error)
    return FakeRunner("127.0.0.1:9001", run)


@pytest.mark.parametrize(("pool", "code", "details"), [
    (FakePool([failing(RunnerError("runner 127.0.0.1:9001 failed the call: boom",
                                   error_code=502))]),
     S.UNAVAILABLE, "runner 127.0.0.1:9001 failed the call: boom"),
    (FakePool([failing(RunnerError("function says no", user_error=True))]),
     S.UNKNOWN, "function says no"),
    (FakePool([failing(RunnerError("timed out", error_code=504))]),
     S.DEADLINE_EXCEEDED, "timed out"),
    (FakePool([failing(RunnerError("too big", error_code=413))]),
     S.INVALID_ARGUMENT, "too big"),
    (FakePool([], PoolError("dns: x: no such name (NXDOMAIN)", retryable=False)),
     S.UNAVAILABLE, "dns: x: no such name (NXDOMAIN)"),
    (FakePool([FakeRunner("127.0.0.1:9001", "busy")]),
     S.UNAVAILABLE, "Timed out - server too busy"),
])
async def test_front_door_reports_what_clients_saw_before(
        pool: FakePool, code: grpc.StatusCode, details: str) -> None:
    async with front_door(pool, placer_timeout=0.05) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(lb_pb2.InvokeRequest(fn_id="f"), timeout=10)
        assert (e.value.code(), e.value.details()) == (code, details)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _stream(stub)
        assert (e.value.code(), e.value.details()) == (code, details)


async def _stream(stub: lb_pb2_grpc.LoadBalancerStub) -> None:
    async def requests() -> AsyncIterator[lb_pb2.InvokeStreamRequest]:
        yield lb_pb2.InvokeStreamRequest(request=lb_pb2.InvokeRequest(fn_id="f"))

    async for _ in stub.InvokeStream(requests(), timeout=10):
        pass


async def test_front_door_bad_request_names_the_field() -> None:
    async with front_door(FakePool([FakeRunner("127.0.0.1:9001")])) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(lb_pb2.InvokeRequest(fn_id=" "), timeout=10)
        assert (e.value.code(), e.value.details()) == (S.INVALID_ARGUMENT, "fn_id: required")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(lb_pb2.InvokeRequest(fn_id="f", timeout_s=-1), timeout=10)
        assert (e.value.code(), e.value.details()) == (
            S.INVALID_ARGUMENT, "timeout_s: must be 0..3600, got -1")


async def test_admin_errors_name_the_field() -> None:
    async with lb_server() as (lb, _), admin(lb) as stub:
        for call, code, details in (
                (stub.AddRunner(lb_pb2.AddRunnerRequest(address="nope"), timeout=5),
                 S.INVALID_ARGUMENT, "address: runner address 'nope' must be HOST:PORT"),
                (stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="nope:x"), timeout=5),
                 S.INVALID_ARGUMENT, "address: bad port in runner address 'nope:x' (1-65535)"),
                (stub.DrainRunner(lb_pb2.DrainRunnerRequest(address="127.0.0.1:7"), timeout=5),
                 S.NOT_FOUND, "runner 127.0.0.1:7 is not in the pool"),
                (stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address="127.0.0.1:9001"),
                                   timeout=5),
                 S.FAILED_PRECONDITION, "runner 127.0.0.1:9001 comes from static: remove it "
                                        "there, or drain it (Admin/DrainRunner)")):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert (e.value.code(), e.value.details()) == (code, details)


def test_the_lbs_deadline_text_is_grpcs() -> None:
    # A client sees "Deadline Exceeded" from its own gRPC timer; when the LB's
    # notices first, the words must be the same.
    e = ClientTimeout()
    assert (grpc_status(e), str(e)) == (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
