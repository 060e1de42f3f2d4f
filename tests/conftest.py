"""Fixtures shared by test modules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from fnlb.harness import reserved_port
from fnlb.transport import GrpcRunner
from fnlb.v1 import runner_pb2_grpc
from tests.inproc import Counting, MiB, StreamOnlyRunner


@pytest.fixture
def fixed_port() -> Iterator[int]:
    """A port reserved for the test (``fnlb.harness.reserved_port``): for what cannot use 0."""
    with reserved_port() as port:
        yield port


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[str], runner_pb2_grpc.RunnerStub]]:
    """A raw ``fnlb.v1.Runner`` stub to an address; channels closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def make(addr: str) -> runner_pb2_grpc.RunnerStub:
        ch = grpc.aio.insecure_channel(addr, options=[
            ("grpc.max_receive_message_length", 64 * MiB)])
        channels.append(ch)
        return runner_pb2_grpc.RunnerStub(ch)

    yield make
    for ch in channels:
        await ch.close()


@pytest.fixture
async def make_runner() -> AsyncIterator[Callable[..., GrpcRunner]]:
    """``GrpcRunner(addr, **kw)``, closed after the test."""
    made: list[GrpcRunner] = []

    def make(addr: str, **kw: Any) -> GrpcRunner:
        r = GrpcRunner(addr, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.close()


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


class _LogEvent(logging.Handler):
    """Sets an asyncio.Event when the stub logs ``message`` (same loop, same thread)."""

    def __init__(self, message: str) -> None:
        super().__init__(logging.DEBUG)
        self.message = message
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.event.set()


@pytest.fixture
def accepted() -> Iterator[asyncio.Event]:
    """Set when an in-process runner stub logs "call accepted" (a slot taken)."""
    logger = logging.getLogger("runner_stub")
    handler, level = _LogEvent("call accepted"), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.event
    logger.removeHandler(handler)
    logger.setLevel(level)
