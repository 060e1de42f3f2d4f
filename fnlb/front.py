"""The front door: ``fnlb.v1.LoadBalancer`` (Invoke, InvokeStream) and request validation.

``build_call`` turns an ``InvokeRequest`` into a call (a bad field is an
``InvalidRequest`` naming it); ``LoadBalancerServicer`` hands calls to the
agent and maps what went wrong to a gRPC status (``fnlb.error_status``). The
servers and their lifecycle are ``fnlb.server``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Literal

import grpc

from fnlb.agent import Agent
from fnlb.calls import BufferSink, LBCall, new_call_id
from fnlb.config import LBConfig
from fnlb.drain import Drain
from fnlb.error_status import grpc_status
from fnlb.errors import FnlbError, InvalidRequest, ShuttingDown
from fnlb.logs import kv
from fnlb.placers.queue import QueueFull
from fnlb.runnerpool import (
    DETACHED,
    SYNC,
    CallModel,
    ResponseSink,
    Runner,
)
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["LoadBalancerServicer", "build_call"]

log = logging.getLogger(__name__)

_MAX_TIMEOUT_S = 3600
_MAX_MEMORY_MB = 1 << 20
_STREAM_CHUNK = 64 * 1024


def build_call(req: lb_pb2.InvokeRequest, body: bytes, max_body_bytes: int,
               default_timeout_s: int = 30, sink: ResponseSink | None = None) -> LBCall:
    """Validate an InvokeRequest; the error message names the bad field."""
    fn_id = req.fn_id.strip()
    if not fn_id:
        raise InvalidRequest("fn_id: required")
    if len(fn_id) > 255 or any(ord(c) < 32 for c in fn_id):
        raise InvalidRequest("fn_id: at most 255 printable characters")
    if len(body) > max_body_bytes:
        raise InvalidRequest(f"body: {len(body)} bytes exceeds the limit of {max_body_bytes} "
                             "bytes (--max-body-bytes); use a smaller body")
    if not 0 <= req.timeout_s <= _MAX_TIMEOUT_S:
        raise InvalidRequest(f"timeout_s: must be 0..{_MAX_TIMEOUT_S}, got {req.timeout_s}")
    if not 0 <= req.idle_timeout_s <= _MAX_TIMEOUT_S:
        raise InvalidRequest(f"idle_timeout_s: must be 0..{_MAX_TIMEOUT_S}")
    if req.memory_mb > _MAX_MEMORY_MB:
        raise InvalidRequest(f"memory_mb: must be at most {_MAX_MEMORY_MB}, got {req.memory_mb}")
    if len(req.call_id) > 128:
        raise InvalidRequest("call_id: at most 128 characters")
    model = CallModel(
        id=req.call_id or new_call_id(),
        fn_id=fn_id,
        app_id=req.app_id,
        image=req.image,
        type=DETACHED if req.type == lb_pb2.DETACHED else SYNC,
        timeout=req.timeout_s or default_timeout_s,
        idle_timeout=req.idle_timeout_s or 30,
        idempotent=req.idempotent,
        memory=req.memory_mb or 128,
        config=dict(req.config),
        headers={k: [v] for k, v in req.headers.items()},
    )
    return LBCall(model, body, sink)


def _buffer(call: LBCall) -> BufferSink:
    """The front door's calls are built by ``build_call`` with a BufferSink."""
    sink = call.response
    assert isinstance(sink, BufferSink)
    return sink


class _StreamSink:
    """InvokeStream's response sink: the body goes on to the client as it arrives.

    A ``fnlb.transport.StreamingSink``: GrpcRunner sends the call over TryExec
    and names the runner (``runner``) before ``start``. No back-pressure: a
    slow client lets up to --max-response-bytes wait here, as a BufferSink would.
    """

    streaming: Literal[True] = True

    def __init__(self) -> None:
        self.runner = ""
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.started = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False

    def start(self, status_code: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status_code = status_code
        self.headers = list(headers)
        self.started = True
        self._wake.set()

    def write(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._wake.set()

    def close(self) -> None:
        """No more writes: the call is over."""
        self._closed = True
        self._wake.set()

    async def started_on_runner(self) -> bool:
        """Wait until the response began on a named runner (True) or the call ended (False)."""
        while not (self.started and self.runner):
            if self._closed:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it comes, in pieces of about _STREAM_CHUNK bytes, until the call ends."""
        chunks = self._chunks
        while True:
            if not chunks:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            piece, size = [], 0
            while chunks and size < _STREAM_CHUNK:
                size += len(chunks[0])
                piece.append(chunks.popleft())
            yield piece[0] if len(piece) == 1 else b"".join(piece)


def _client_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LoadBalancerServicer(lb_pb2_grpc.LoadBalancerServicer):
    def __init__(self, agent: Agent, config: LBConfig, drain: Drain | None = None) -> None:
        self._agent = agent
        self._cfg = config
        self._drain = drain if drain is not None else Drain()

    async def _run(self, call: LBCall, context: grpc.aio.ServicerContext[Any, Any],
                   submitted: Awaitable[Runner] | None = None) -> str:
        """Submit ``call`` (or await its ``submitted`` task); an error aborts the RPC.

        Abort only from the handler's own task: gRPC sends the status at once,
        which must not overlap a response message the handler is writing.
        """
        try:
            runner = await (submitted if submitted is not None
                            else self._agent.submit(call, _client_deadline(context)))
        except FnlbError as e:
            code = grpc_status(e)
            if isinstance(e, QueueFull):
                # gRPC's retry pushback: when a retry may find room in the queue.
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(e.pushback_ms)),))
                # Shedding is the designed answer to overload: the metrics count
                # it; a log line per call would flood the log exactly then.
                log.debug("call shed", extra=kv(call_id=call.model.id, app_id=e.app_id,
                                                reason=e.reason, limit=e.limit))
            elif isinstance(e, ShuttingDown):
                log.debug("call refused: shutting down", extra=kv(call_id=call.model.id))
            elif not isinstance(e, InvalidRequest):
                log.warning("call failed", extra=kv(call_id=call.model.id, fn_id=call.model.fn_id,
                                                    runner=getattr(e, "runner", ""),
                                                    code=code.name, error=str(e)))
            await context.abort(code, str(e))
        return runner.address

    def _response(self, call: LBCall, runner: str, sink: BufferSink | _StreamSink,
                  body: bytes = b"") -> lb_pb2.InvokeResponse:
        status = sink.status_code or (202 if call.model.type == DETACHED else 200)
        headers: dict[str, str] = {}
        for k, v in sink.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return lb_pb2.InvokeResponse(
            call_id=call.model.id, status_code=status, headers=headers,
            body=body, runner=runner, attempts=call.attempts)

    async def Invoke(self, request: lb_pb2.InvokeRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> lb_pb2.InvokeResponse:
        async with self._drain.admitted(context):
            try:
                call = build_call(request, request.body, self._cfg.max_body_bytes,
                                  self._cfg.default_timeout_s)
            except InvalidRequest as e:
                await context.abort(grpc_status(e), str(e))
            runner = await self._run(call, context)
            sink = _buffer(call)
            return self._response(call, runner, sink, sink.body())

    async def InvokeStream(
        self, request_iterator: AsyncIterator[lb_pb2.InvokeStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[lb_pb2.InvokeStreamResponse]:
        async with self._drain.admitted(context):
            async for msg in self._invoke_stream(request_iterator, context):
                yield msg

    async def _invoke_stream(
        self, request_iterator: AsyncIterator[lb_pb2.InvokeStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[lb_pb2.InvokeStreamResponse]:
        first: lb_pb2.InvokeRequest | None = None
        parts: list[bytes] = []
        size = 0
        limit = self._cfg.max_body_bytes
        async for msg in request_iterator:
            kind = msg.WhichOneof("msg")
            if first is None:
                if kind != "request":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        "request: the first message must be `request`")
                first = msg.request
                chunk = first.body
            elif kind == "data":
                chunk = msg.data
            else:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "request: only the first message may be `request`")
            size += len(chunk)
            if size > limit:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"body: exceeds the limit of {limit} bytes (--max-body-bytes)")
            parts.append(chunk)
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: no message received")
        assert first is not None  # context.abort() raised otherwise
        sink = _StreamSink()
        try:
            call = build_call(first, b"".join(parts), limit, self._cfg.default_timeout_s, sink)
        except InvalidRequest as e:
            await context.abort(grpc_status(e), str(e))
        # The response goes on as it arrives: `response` once the runner
        # started it, then the body. An error after that ends the stream with
        # its status, after the part of the body already sent.
        run = asyncio.create_task(self._agent.submit(call, _client_deadline(context)))
        run.add_done_callback(lambda _: sink.close())
        try:
            if await sink.started_on_runner():
                yield lb_pb2.InvokeStreamResponse(
                    response=self._response(call, sink.runner, sink))
                async for piece in sink.body():
                    yield lb_pb2.InvokeStreamResponse(data=piece)
                await self._run(call, context, run)  # an error is the stream's status
                return
            runner = await self._run(call, context, run)
            yield lb_pb2.InvokeStreamResponse(response=self._response(call, runner, sink))
            async for piece in sink.body():  # a runner that did not name itself
                yield lb_pb2.InvokeStreamResponse(data=piece)
        finally:
            if not run.done():
                run.cancel()  # the client went away: so does the call
            elif not run.cancelled():
                run.exception()  # seen, even when the client left before its error


