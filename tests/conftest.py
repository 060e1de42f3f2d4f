"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from fnlb.v1 import runner_pb2_grpc
from tests.inproc import Counting, MiB, StreamOnlyRunner


@pytest.fixture
async def in_process() -> AsyncIterator[Callable[[StreamOnlyRunner], Awaitable[Counting]]]:
    servers: list[grpc.aio.Server] = []

    async def serve(servicer: StreamOnlyRunner) -> Counting:
        counting = Counting()
        server = grpc.aio.server(interceptors=[counting], options=[
            ("grpc.max_receive_message_length", 64 * MiB)])
        runner_pb2_grpc.add_RunnerServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        servicer.addr = f"127.0.0.1:{port}"
        await server.start()
        servers.append(server)
        return counting

    yield serve
    for s in servers:
        await s.stop(0)
