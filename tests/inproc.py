"""Tiny in-process runners: what fn-compatible runners without our fast paths look like.

``StreamOnlyRunner`` serves TryExec (echo) and Status with no features, like
fn's runners; ``EchoBothRunner`` adds Runner/Call. The ``in_process`` fixture
(tests/conftest.py) serves one on 127.0.0.1 and counts the RPCs it gets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from fnlb.v1 import runner_pb2, runner_pb2_grpc

MiB = 1024 * 1024


class Counting(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.methods: Counter[str] = Counter()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.methods[handler_call_details.method.rsplit("/", 1)[-1]] += 1
        return await continuation(handler_call_details)


class StreamOnlyRunner(runner_pb2_grpc.RunnerServicer):
    """An fn-compatible runner: TryExec (echo) and Status; Call is UNIMPLEMENTED."""

    def __init__(self, with_call: bool = False) -> None:
        self.addr = ""
        self.with_call = with_call

    async def TryExec(self, request_iterator: Any, context: Any) -> None:
        body = b""
        async for msg in request_iterator:
            if msg.WhichOneof("body") == "data":
                body += msg.data.data
                if msg.data.eof:
                    break
        yield runner_pb2.RunnerMsg(result_start=runner_pb2.CallResultStart(
            http=runner_pb2.HttpRespMeta(status_code=200)))
        yield runner_pb2.RunnerMsg(data=runner_pb2.DataFrame(data=body, eof=True))
        yield runner_pb2.RunnerMsg(finished=runner_pb2.CallFinished(success=True))

    async def Status(self, request: Any, context: Any) -> runner_pb2.RunnerStatus:
        return runner_pb2.RunnerStatus(runner_id=self.addr, id=self.addr, slots_total=8,
                                       slots_free=8, memory_mb_total=8192,
                                       memory_mb_free=8192)


class EchoBothRunner(StreamOnlyRunner):
    async def Call(self, request: Any, context: Any) -> runner_pb2.CallReply:
        return runner_pb2.CallReply(
            http=runner_pb2.HttpRespMeta(status_code=200), body=request.body,
            finished=runner_pb2.CallFinished(success=True))
