"""fn's runner protocol on the LB side: the RPCs an fn pure runner serves, and
which protocol a runner speaks.

fn's ``runner.proto`` declares no package, so an fn runner serves
``/RunnerProtocol/Engage`` (a TryExec stream by another name) and
``/RunnerProtocol/Status``. fnlb.v1's messages keep fn's field numbers (ours
start at 30), so the LB speaks to fn runners with its own messages: the
``FnRunnerStub`` is ``runner_pb2_grpc.RunnerStub`` for those two paths, and
``GrpcRunner`` drives it with the same TryExec code (``_tryexec``).

What fn runners lack here: no Runner/Call or Runner/Calls fast paths, no
acknowledgements ("ack"), no Close (draining one is the LB's own: it stops
placing there), and a Status without slots or memory (capacity unknown).

    stub = FnRunnerStub(channel)
    status = status_from_fn(await stub.Status(empty_pb2.Empty()))
"""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf import empty_pb2

from fnlb.runnerpool import RunnerStatus
from fnlb.v1 import runner_pb2

__all__ = [
    "AUTO",
    "FN",
    "FN_ENGAGE",
    "FN_STATUS",
    "FNLB",
    "PROTOCOLS",
    "FnRunnerStub",
    "protocol_of",
    "status_from_fn",
]

FNLB: Final = "fnlb"
"""fnlb.v1.Runner: TryExec, Call, Calls, Status, Close."""
FN: Final = "fn"
"""fn's RunnerProtocol: Engage and Status only."""
AUTO: Final = "auto"
"""Ask fnlb.v1.Runner/Status; on UNIMPLEMENTED ask /RunnerProtocol/Status."""
PROTOCOLS: Final = (AUTO, FNLB, FN)

FN_ENGAGE: Final = "/RunnerProtocol/Engage"
FN_STATUS: Final = "/RunnerProtocol/Status"


class FnRunnerStub:
    """fn's RunnerProtocol with fnlb.v1's messages (same field numbers).

    ``TryExec`` is fn's Engage, so ``try_exec_stream`` drives either stub.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.TryExec = channel.stream_stream(
            FN_ENGAGE, request_serializer=runner_pb2.ClientMsg.SerializeToString,
            response_deserializer=runner_pb2.RunnerMsg.FromString)
        self.Status = channel.unary_unary(
            FN_STATUS, request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=runner_pb2.RunnerStatus.FromString)


def status_from_fn(s: runner_pb2.RunnerStatus) -> RunnerStatus:
    """An fn runner's Status: only fn's fields count (no slots: capacity unknown,
    no features: no fast paths, never draining)."""
    return RunnerStatus(
        active=s.active, requests_received=s.requestsReceived,
        requests_handled=s.requestsHandled, failed=s.failed, error_code=s.errorCode,
        error_str=s.errorStr, is_network_disabled=s.isNetworkDisabled,
        custom=dict(s.customStatus))


def protocol_of(scheme: str | None, default: str) -> str:
    """The protocol for an address: its scheme (``fn://``, ``fnlb://``) or ``default``."""
    if scheme is None:
        return default
    if scheme not in (FN, FNLB):
        raise ValueError(f"unknown runner protocol {scheme!r}")
    return scheme
