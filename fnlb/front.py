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
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from fnlb.access import AccessLog
from fnlb.agent import Agent
from fnlb.calls import BufferSink, LBCall, new_call_id
from fnlb.config import REQUEST_OVERHEAD_BYTES, LBConfig
from fnlb.drain import Drain
from fnlb.error_status import grpc_status
from fnlb.errors import FnlbError, InvalidRequest, ShuttingDown
from fnlb.logs import kv
from fnlb.phases import (
    ATTEMPTS_TRAILER,
    PHASES_TRAILER,
    format_attempts,
    format_phases,
    trace_wanted,
)
from fnlb.placers.queue import QueueFull
from fnlb.runnerpool import (
    DETACHED,
    SYNC,
    CallModel,
    ResponseSink,
    Runner,
)
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["LoadBalancerServicer", "add_load_balancer", "build_call"]

# The context of either front-door RPC, for the steps they share.
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

_MAX_TIMEOUT_S = 3600
_MAX_MEMORY_MB = 1 << 20
_STREAM_CHUNK = 64 * 1024


# Bounds on a call's maps and ids (README, Security model). Each refusal is an
# INVALID_ARGUMENT naming the field and the limit.
MAX_MAP_ENTRIES = 64
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 4096
MAX_ID_CHARS = 255
MAX_CALL_ID_CHARS = 128
MAX_IMAGE_CHARS = 1024
# fn_id, app_id, call_id, image: printable ASCII without spaces ("!".."~"), so no
# control, DEL, bidirectional-override or zero-width character reaches logs,
# metrics labels or runners.
ID_PATTERN = "[!-~]"
_ID_RE = re.compile(r"[!-~]*")
# Header names and values: no control characters (CR/LF would split the HTTP
# request the runner builds), tab allowed in values.
_HEADER_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_id(field: str, value: str, most: int) -> None:
    if len(value) > most:
        raise InvalidRequest(f"{field}: {len(value)} characters, at most {most}")
    if not _ID_RE.fullmatch(value):
        bad = next(c for c in value if not "!" <= c <= "~")
        raise InvalidRequest(f"{field}: character U+{ord(bad):04X} not allowed: printable "
                             f"ASCII without spaces only ({ID_PATTERN}, at most {most})")


def _map_bytes(field: str, entries: Mapping[str, str], headers: bool) -> int:
    """Bytes of ``entries`` (keys + values, UTF-8); a bad entry names the field."""
    if len(entries) > MAX_MAP_ENTRIES:
        raise InvalidRequest(f"{field}: {len(entries)} entries, at most {MAX_MAP_ENTRIES}")
    total = 0
    for k, v in entries.items():
        kb, vb = len(k.encode()), len(v.encode())
        if not k:
            raise InvalidRequest(f"{field}: empty key")
        if kb > MAX_KEY_BYTES:
            raise InvalidRequest(f"{field}: key {k[:32]!r}...: {kb} bytes, "
                                 f"at most {MAX_KEY_BYTES}")
        if vb > MAX_VALUE_BYTES:
            raise InvalidRequest(f"{field}[{k[:64]!r}]: value of {vb} bytes, "
                                 f"at most {MAX_VALUE_BYTES}")
        if headers and (_HEADER_BAD.search(k) or _HEADER_BAD.search(v)):
            raise InvalidRequest(f"{field}[{k[:64]!r}]: control characters are not allowed "
                                 "in header names or values")
        total += kb + vb
    return total


def build_call(req: lb_pb2.InvokeRequest, body: bytes, max_body_bytes: int,
               default_timeout_s: int = 30, sink: ResponseSink | None = None, *,
               max_request_bytes: int | None = None) -> LBCall:
    """Validate an InvokeRequest; the error message names the bad field and the limit.

    ``max_request_bytes`` (default: ``max_body_bytes`` + REQUEST_OVERHEAD_BYTES)
    bounds body + config + headers + ids together.
    """
    fn_id = req.fn_id.strip()
    if not fn_id:
        raise InvalidRequest("fn_id: required")
    _check_id("fn_id", fn_id, MAX_ID_CHARS)
    _check_id("app_id", req.app_id, MAX_ID_CHARS)
    _check_id("call_id", req.call_id, MAX_CALL_ID_CHARS)
    _check_id("image", req.image, MAX_IMAGE_CHARS)
    if req.type not in (lb_pb2.SYNC, lb_pb2.DETACHED):
        raise InvalidRequest(f"type: unknown CallType {req.type} (SYNC=0 or DETACHED=1)")
    if len(body) > max_body_bytes:
        raise InvalidRequest(f"body: {len(body)} bytes exceeds the limit of {max_body_bytes} "
                             "bytes (--max-body-bytes); use a smaller body")
    config_bytes = _map_bytes("config", req.config, headers=False)
    header_bytes = _map_bytes("headers", req.headers, headers=True)
    limit = max_request_bytes or max_body_bytes + REQUEST_OVERHEAD_BYTES
    ids = len(fn_id) + len(req.app_id) + len(req.image) + len(req.call_id)
    total = len(body) + config_bytes + header_bytes + ids
    if total > limit:
        raise InvalidRequest(
            f"request: {total} bytes (body {len(body)}, config {config_bytes}, headers "
            f"{header_bytes}, ids {ids}) exceeds the limit of {limit} bytes "
            "(--max-request-bytes)")
    if not 0 <= req.timeout_s <= _MAX_TIMEOUT_S:
        raise InvalidRequest(f"timeout_s: must be 0..{_MAX_TIMEOUT_S}, got {req.timeout_s}")
    if not 0 <= req.idle_timeout_s <= _MAX_TIMEOUT_S:
        raise InvalidRequest(f"idle_timeout_s: must be 0..{_MAX_TIMEOUT_S}")
    if req.memory_mb > _MAX_MEMORY_MB:
        raise InvalidRequest(f"memory_mb: must be at most {_MAX_MEMORY_MB}, got {req.memory_mb}")
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


class Malformed:
    """A request message that did not parse; its handler answers INVALID_ARGUMENT.

    gRPC reports a deserializer's exception as UNKNOWN with the Python class in
    the details and logs a traceback per request; ``add_load_balancer``'s
    deserializers return this instead, so the handler sends the status.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as e:
            # "Error parsing message with type 'fnlb.v1.InvokeRequest': String
            # field had bad UTF-8": protobuf's words, no Python internals.
            return Malformed(str(e) or "not a valid protobuf message")
    return deserialize


class Throttled:
    """At most one warning per ``interval`` s; the next line counts those left out.

    For what a client can cause at will (malformed messages): one line per
    request would be a lever to flood the log.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def warning(self, msg: str, **fields: Any) -> bool:
        """Log ``msg`` unless a line went out within the interval; True if logged."""
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._log.warning(msg, extra=kv(**fields, suppressed=self.suppressed,
                                        interval_s=f"{self._interval:g}"))
        self.suppressed = 0
        self._next = now + self._interval
        return True


def add_load_balancer(servicer: LoadBalancerServicer, server: grpc.aio.Server) -> None:
    """Serve ``fnlb.v1.LoadBalancer`` on ``server`` (``add_LoadBalancerServicer_to_server``
    with deserializers that turn a malformed message into INVALID_ARGUMENT)."""
    handlers = {
        "Invoke": grpc.unary_unary_rpc_method_handler(
            servicer.Invoke,
            request_deserializer=_lenient(lb_pb2.InvokeRequest.FromString),
            response_serializer=lb_pb2.InvokeResponse.SerializeToString),
        "InvokeStream": grpc.stream_stream_rpc_method_handler(
            servicer.InvokeStream,
            request_deserializer=_lenient(lb_pb2.InvokeStreamRequest.FromString),
            response_serializer=lb_pb2.InvokeStreamResponse.SerializeToString),
    }
    name = lb_pb2.DESCRIPTOR.services_by_name["LoadBalancer"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _client_deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LoadBalancerServicer(lb_pb2_grpc.LoadBalancerServicer):
    def __init__(self, agent: Agent, config: LBConfig, drain: Drain | None = None) -> None:
        self._agent = agent
        self._cfg = config
        self._drain = drain if drain is not None else Drain()
        self._malformed_log = Throttled(log)
        self._access = AccessLog(enabled=config.access_log, rate=config.access_log_rate,
                                 suppressed=agent.metrics.access_log_suppressed)

    async def _malformed(self, bad: Malformed,
                         context: Context) -> NoReturn:
        """Answer a message that did not parse: INVALID_ARGUMENT, counted, logged throttled."""
        self._agent.metrics.malformed_requests.inc()
        self._malformed_log.warning("malformed request", peer=context.peer(), error=bad.reason)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {bad.reason}")
        raise AssertionError("context.abort() returned")  # it raises

    def _build(self, req: lb_pb2.InvokeRequest, body: bytes,
               sink: ResponseSink | None = None) -> LBCall:
        cfg = self._cfg
        return build_call(req, body, cfg.max_body_bytes, cfg.default_timeout_s, sink,
                          max_request_bytes=cfg.request_limit)

    async def _run(self, call: LBCall, context: Context,
                   submitted: Awaitable[Runner] | None = None, bytes_out: int = 0) -> str:
        """Submit ``call`` (or await its ``submitted`` task); an error ends the call
        (``_end``) and aborts the RPC.

        Abort only from the handler's own task: gRPC sends the status at once,
        which must not overlap a response message the handler is writing.
        """
        try:
            runner = await (submitted if submitted is not None
                            else self._agent.submit(call, _client_deadline(context)))
        except FnlbError as e:
            code = grpc_status(e)
            trailers: tuple[tuple[str, str], ...] = ()
            if isinstance(e, QueueFull):
                # gRPC's retry pushback: when a retry may find room in the queue.
                trailers = (("grpc-retry-pushback-ms", str(e.pushback_ms)),)
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
            self._end(call, code, bytes_out, context, trailers)
            await context.abort(code, str(e))
        return runner.address

    def _end(self, call: LBCall, code: grpc.StatusCode, bytes_out: int,
             context: Context | None = None, trailers: Sequence[tuple[str, str]] = ()) -> None:
        """The call is over for the client: observe its phases and overhead, write its
        access line, and set ``trailers`` (with the trace, when the client asked
        for it: ``fnlb-trace: 1``). Once per call; ``context`` None: the client is gone.
        """
        t = call.timings
        end = t.over()
        if end is None:
            return
        phases = t.breakdown(end)
        total = end - t.start
        m = self._agent.metrics
        for name, seconds in phases.items():
            m.call_phase_by[name].observe(seconds)
        if t.status:
            # fn's proposed refinement of lb_call_latency: take out the image pull
            # and cold start too, so what remains is what the LB itself cost.
            overhead = total - (phases.get("execution", 0.0) + phases.get("image_pull", 0.0)
                                + phases.get("cold_start", 0.0))
            if overhead >= 0:
                m.call_overhead_by[t.status].observe(overhead)
        if self._access.admit():
            model = call.model
            execution = phases.get("execution")
            self._access.write(
                call_id=model.id, fn_id=model.fn_id, app_id=model.app_id, type=model.type,
                status=t.status or "canceled", grpc_code=code.name, runner=t.runner,
                attempts=call.attempts, queue_ms=f"{t.queue * 1000:.1f}",
                total_ms=f"{total * 1000:.1f}",
                exec_ms="-" if execution is None else f"{execution * 1000:.1f}",
                bytes_in=len(call.request_body()), bytes_out=bytes_out)
        if context is None:
            return
        if trace_wanted(context.invocation_metadata()):
            trailers = (*trailers, (ATTEMPTS_TRAILER, format_attempts(t.trail())),
                        (PHASES_TRAILER, format_phases(phases, total)))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))

    def _gone(self, call: LBCall, bytes_out: int = 0) -> None:
        """End a call whose RPC ended without ``_end`` (cancelled, deadline, or a bug)."""
        status = call.timings.status
        code = (grpc.StatusCode.DEADLINE_EXCEEDED if status == "timeouts"
                else grpc.StatusCode.CANCELLED if status in ("canceled", "completed", "")
                else grpc.StatusCode.UNKNOWN)
        self._end(call, code, bytes_out)

    def _response(self, call: LBCall, runner: str, sink: BufferSink | _StreamSink,
                  body: bytes = b"") -> lb_pb2.InvokeResponse:
        status = sink.status_code or (202 if call.model.type == DETACHED else 200)
        headers: dict[str, str] = {}
        for k, v in sink.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return lb_pb2.InvokeResponse(
            call_id=call.model.id, status_code=status, headers=headers,
            body=body, runner=runner, attempts=call.attempts)

    async def Invoke(self, request: lb_pb2.InvokeRequest | Malformed,
                     context: grpc.aio.ServicerContext[lb_pb2.InvokeRequest,
                                                       lb_pb2.InvokeResponse],
                     ) -> lb_pb2.InvokeResponse:
        if isinstance(request, Malformed):
            await self._malformed(request, context)
        async with self._drain.admitted(context):
            try:
                call = self._build(request, request.body)
            except InvalidRequest as e:
                await context.abort(grpc_status(e), str(e))
            try:
                runner = await self._run(call, context)
                sink = _buffer(call)
                body = sink.body()
                response = self._response(call, runner, sink, body)
                self._end(call, grpc.StatusCode.OK, len(body), context)
                return response
            finally:
                self._gone(call)  # unless ended above

    async def InvokeStream(
        self, request_iterator: AsyncIterator[lb_pb2.InvokeStreamRequest | Malformed],
        context: Context,
    ) -> AsyncIterator[lb_pb2.InvokeStreamResponse]:
        async with self._drain.admitted(context):
            async for msg in self._invoke_stream(request_iterator, context):
                yield msg

    async def _invoke_stream(
        self, request_iterator: AsyncIterator[lb_pb2.InvokeStreamRequest | Malformed],
        context: Context,
    ) -> AsyncIterator[lb_pb2.InvokeStreamResponse]:
        messages = aiter(request_iterator)
        wait = self._cfg.stream_header_timeout
        try:
            # A stream that never sends its header would hold a stream (and its
            # buffers) for as long as the client likes.
            async with asyncio.timeout(wait):
                head = await anext(messages)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"request: no `request` message within {wait:g}s "
                                "(--stream-header-timeout)")
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: no message received")
        if isinstance(head, Malformed):
            await self._malformed(head, context)
        if head.WhichOneof("msg") != "request":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "request: the first message must be `request`")
        first = head.request
        parts = [first.body]
        size = len(first.body)
        limit = self._cfg.max_body_bytes
        async for msg in messages:
            if isinstance(msg, Malformed):
                await self._malformed(msg, context)
            if msg.WhichOneof("msg") != "data":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "request: only the first message may be `request`")
            size += len(msg.data)
            if size > limit:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"body: exceeds the limit of {limit} bytes (--max-body-bytes)")
            parts.append(msg.data)
        sink = _StreamSink()
        try:
            call = self._build(first, b"".join(parts), sink)
        except InvalidRequest as e:
            await context.abort(grpc_status(e), str(e))
        # The response goes on as it arrives: `response` once the runner
        # started it, then the body. An error after that ends the stream with
        # its status, after the part of the body already sent.
        run = asyncio.create_task(self._agent.submit(call, _client_deadline(context)))
        run.add_done_callback(lambda _: sink.close())
        sent = 0
        try:
            if await sink.started_on_runner():
                yield lb_pb2.InvokeStreamResponse(
                    response=self._response(call, sink.runner, sink))
                async for piece in sink.body():
                    sent += len(piece)
                    yield lb_pb2.InvokeStreamResponse(data=piece)
                # An error is the stream's status.
                await self._run(call, context, run, bytes_out=sent)
                self._end(call, grpc.StatusCode.OK, sent, context)
                return
            runner = await self._run(call, context, run)
            yield lb_pb2.InvokeStreamResponse(response=self._response(call, runner, sink))
            async for piece in sink.body():  # a runner that did not name itself
                sent += len(piece)
                yield lb_pb2.InvokeStreamResponse(data=piece)
            self._end(call, grpc.StatusCode.OK, sent, context)
        finally:
            if not run.done():
                run.cancel()  # the client went away: so does the call
                # Its accounting once the agent is done with it.
                run.add_done_callback(lambda _: self._gone(call, sent))
            else:
                if not run.cancelled():
                    run.exception()  # seen, even when the client left before its error
                self._gone(call, sent)


