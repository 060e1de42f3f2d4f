"""The runner stub's gRPC side: the ``fnlb.v1.Runner`` servicer and its lifecycle.

    async with StubServer(StubConfig(listen="127.0.0.1:0")) as server:
        print(server.addr)          # 127.0.0.1:PORT actually bound
        await server.wait_closed()

Semantics follow fn's pure runner (``api/agent/pure_runner.go``): decide
(accept or NACK) right after ``try``, before the function runs; once accepted,
always end with a ``finished`` message or an error status. A try that asks for
an acknowledgement ("ack" in the features) is acknowledged once its slot is
taken and started only after the LB's go (runner.proto, THE ACKNOWLEDGEMENT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fnlb.authz import caller_of, close_decision
from fnlb.fn import runner_protocol_pb2_grpc as fn_pb2_grpc
from fnlb.logs import kv
from fnlb.timefmt import format_duration, now_rfc3339, rfc3339_ms
from fnlb.v1 import runner_pb2, runner_pb2_grpc
from runner_stub import tracing
from runner_stub.call_logs import CallLogs
from runner_stub.calls import Call as ParsedCall
from runner_stub.calls import parse_call
from runner_stub.config import StubConfig, split_host_port
from runner_stub.errors import (
    BadCall,
    CallRejected,
    FunctionFailed,
    NoGo,
    ProtocolError,
    StartupError,
)
from runner_stub.fn_protocol import FN_SERVICE, FnRunnerService
from runner_stub.functions import MAX_RESPONSE_SIZE, FunctionResult, run_function
from runner_stub.slots import Lease, SlotPool, WarmCache
from runner_stub.watch import StatusFeed

__all__ = ["StubServer", "RunnerService", "Counters", "MAX_DATA_CHUNK", "TOO_BUSY"]

log = logging.getLogger("runner_stub")

MAX_DATA_CHUNK = 10 * 1024  # fn's MaxDataChunk: body frames in both directions
TOO_BUSY = "Timed out - server too busy"  # fn's ErrCallTimeoutServerBusy text
# RunnerStatus.features: Runner/Call, Runner/Calls, acknowledgements (unless
# --ack false) and 1 s keepalive pings (runner.proto); Runner/Watch unless --watch false.
FEATURES = ("call", "calls", "keepalive")
ACK_FEATURE = "ack"
WATCH_FEATURE = "watch"
# A runner whose try was acknowledged waits this long for the LB's go, then
# drops the call (never started): the LB sends it as soon as it reads the ack.
_GO_WAIT_S = 10.0
RUNNER_SERVICE = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Bodies are streamed in 10 KiB frames, but other clients may not chunk.
_MESSAGE_LIMIT = 64 * 1024 * 1024
# A Call reply is one message, as big as the LB's --max-response-bytes allows:
# room for the largest response_size a fake function makes, plus meta.
_SEND_LIMIT = MAX_RESPONSE_SIZE + 1024 * 1024
# The response body plus at most a few KiB of meta and finished must fit.
_REPLY_BODY_LIMIT = _SEND_LIMIT - 64 * 1024
# errorCode of a call whose response is over the LB's limit (fnlb.max_response_bytes).
RESPONSE_TOO_LARGE = 509  # fnlb.transport.RESPONSE_TOO_LARGE
# Response bodies per ReplyBatch, at most, unless one reply alone is bigger:
# a batch must stay under the LB's message limit.
_BATCH_BYTES = 1024 * 1024
_DISCARD_LIMIT_S = 2.0
_CRASH_LINGER_S = 0.1
_CANCEL_GRACE_S = 0.1
_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", _SEND_LIMIT),
    ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
    # Without this a second stub on the same fixed port would silently share it.
    ("grpc.so_reuseport", 0),
    # The LB pings runners that list "keepalive" every second, calls or not
    # (it notices a hung runner by an unanswered ping): allow it. gRPC's
    # default answers such pings with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass
class Counters:
    """Monotonic counters shown by Status.

    Invariant once every stream has decided: received == handled + nacked.
    Bad input is counted in bad_requests only (before ``received`` when the
    call itself is bad, on top of ``handled`` when a body breaks the rules).
    """

    received: int = 0
    handled: int = 0
    nacked: int = 0
    cold_starts: int = 0
    warm_hits: int = 0
    canceled: int = 0
    failed: int = 0
    completed: int = 0  # functions that ran to their end without error
    bad_requests: int = 0
    started: int = 0  # functions started (an accepted call that was dropped never starts)
    status_calls: int = 0  # Status RPCs answered (this one included): what polling costs


@dataclass(frozen=True)
class _Instant:
    wall: datetime
    mono_ns: int


def _now() -> _Instant:
    return _Instant(datetime.now(UTC), time.monotonic_ns())


class _Startup(NamedTuple):
    """What starting a function that was not warm took, in ns."""

    image_pull_ns: int = 0
    cold_start_ns: int = 0


def _try_of(msg: runner_pb2.ClientMsg) -> runner_pb2.TryCall:
    # `try` is a Python keyword, hence getattr.
    tc: runner_pb2.TryCall = getattr(msg, "try")
    return tc


class _Requests:
    """The reading side of one TryExec stream; remembers when the client is done sending."""

    __slots__ = ("_context", "done")

    def __init__(self, context: Any) -> None:
        self._context = context
        self.done = False

    async def read(self) -> Any:
        msg = await self._context.read()
        if msg is grpc.aio.EOF:
            self.done = True
            # grpc.aio reads EOF both when the client half-closed and when it
            # cancelled; the cancellation reaches the task a moment later.
            # Waiting briefly lets a cancel be handled as one (call canceled,
            # slot freed) instead of as a protocol error. Well-behaved clients
            # end with an eof frame and never get here.
            await asyncio.sleep(_CANCEL_GRACE_S)
        elif msg.WhichOneof("body") == "data" and msg.data.eof:
            self.done = True
        return msg

    async def discard_rest(self) -> None:
        """Read and drop what the client still sends, up to its eof (bounded in time).

        Ending a stream while the client is still writing makes a grpc.aio
        client's pending write fail, and that failure replaces the status and
        messages we sent with INTERNAL "Internal error from Core". So before
        ending early (NACK, refusal, protocol error) let the client finish.
        """
        if self.done:
            return
        try:
            async with asyncio.timeout(_DISCARD_LIMIT_S):
                while not self.done:
                    await self.read()
        except TimeoutError:
            log.debug("client still sending; ending the stream anyway")


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _StreamIO:
    """A call's input and output as TryExec messages: body frames in, RunnerMsgs out."""

    __slots__ = ("_requests", "_context", "detached_ack", "orphaned", "_go_pending")
    streams = True
    acks = True  # can acknowledge a try; the go is the first body frame

    def __init__(self, requests: _Requests, context: Any) -> None:
        self._requests = requests
        self._context = context
        # A detached call's 202 was sent: from then on the call is the runner's.
        self.detached_ack = False
        # The stream is gone (after detached_ack): nothing more is sent.
        self.orphaned = False
        self._go_pending = False

    def cancelled(self) -> bool:
        """The LB cancelled the stream (or it broke): start nothing for it."""
        return bool(self._context.cancelled() or self._context.done() or _task_cancelling())

    async def acknowledge(self) -> None:
        """Send the ack; the LB's go is the first body frame, which ``read_body`` awaits."""
        await self._context.write(runner_pb2.RunnerMsg(ack=runner_pb2.CallAck()))
        self._go_pending = True

    async def read_body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            if self._go_pending:
                try:
                    async with asyncio.timeout(_GO_WAIT_S):
                        msg = await self._requests.read()
                except TimeoutError:
                    raise NoGo(f"acknowledged, but no go (body) came within "
                               f"{_GO_WAIT_S:g}s: dropped, not run") from None
                self._go_pending = False
            else:
                msg = await self._requests.read()
            kind = _kind(msg)
            if kind != "data":
                if kind == "try":
                    raise ProtocolError("second try on one stream: expected data frames")
                raise ProtocolError(f"expected data frames ending with eof, got {kind}")
            frame = msg.data
            size += len(frame.data)
            if size > limit:
                raise CallRejected(413, f"request body exceeds {limit} bytes", user_error=True)
            if frame.data:
                chunks.append(frame.data)
            if frame.eof:
                return b"".join(chunks)

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self._context.write(runner_pb2.RunnerMsg(result_start=runner_pb2.CallResultStart(
            http=_http_meta(status, headers))))

    async def send_body(self, body: bytes) -> None:
        context = self._context
        if not body:
            await context.write(runner_pb2.RunnerMsg(data=runner_pb2.DataFrame(eof=True)))
            return
        view = memoryview(body)
        for offset in range(0, len(body), MAX_DATA_CHUNK):
            chunk = view[offset:offset + MAX_DATA_CHUNK]
            await context.write(runner_pb2.RunnerMsg(data=runner_pb2.DataFrame(
                data=bytes(chunk), eof=offset + MAX_DATA_CHUNK >= len(body))))

    async def finish(self, finished: runner_pb2.CallFinished) -> None:
        if tracing.enabled:
            tracing.finished(finished)
        if self.orphaned:
            return  # a detached call outlived its stream: no one is listening
        await self._context.write(runner_pb2.RunnerMsg(finished=finished))

    async def discard_rest(self) -> None:
        await self._requests.discard_rest()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        await self._context.abort(code, details)


class _FnStreamIO(_StreamIO):
    """fn's Engage: TryExec's stream without the acknowledgement (fn knows none)."""

    __slots__ = ()
    acks = False


class _UnaryIO:
    """A call's input and output as one CallReply: the whole body in, one reply out.

    For Call ``context`` is the RPC's (a bad request aborts it); on the Calls
    stream it is None and a bad request is a ``finished`` with code 400, since
    a status would end the stream for every other call on it.
    """

    __slots__ = ("_body", "_context", "reply")
    streams = False
    detached_ack = False  # detached calls come over TryExec only
    orphaned = False
    acks = False  # Call has no acknowledgement (one message each way)

    def __init__(self, body: bytes, context: Any | None) -> None:
        self._body = body
        self._context = context
        self.reply = runner_pb2.CallReply()

    def cancelled(self) -> bool:
        ctx = self._context
        return bool(_task_cancelling() or (
            ctx is not None and (ctx.cancelled() or ctx.done())))

    async def acknowledge(self) -> None:
        raise AssertionError("Runner/Call has no acknowledgement")

    async def read_body(self, limit: int) -> bytes:
        if len(self._body) > limit:
            raise CallRejected(413, f"request body exceeds {limit} bytes", user_error=True)
        return self._body

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.reply.http.CopyFrom(_http_meta(status, headers))

    async def send_body(self, body: bytes) -> None:
        self.reply.body = body

    async def finish(self, finished: runner_pb2.CallFinished) -> None:
        if tracing.enabled:
            tracing.finished(finished)
        self.reply.finished.CopyFrom(finished)

    async def discard_rest(self) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        if self._context is not None:
            await self._context.abort(code, details)
            return
        self.reply.ClearField("http")
        self.reply.ClearField("body")
        self.reply.finished.CopyFrom(runner_pb2.CallFinished(
            success=False, errorCode=400, errorStr=f"{code.name}: {details}"))


class _CallsIO(_UnaryIO):
    """One call on the Calls stream: as Call, plus the ack (ReplyBatch.acks) and
    its go (CallBatch.go)."""

    __slots__ = ("_stream", "_seq")
    acks = True

    def __init__(self, body: bytes, stream: _CallStream, seq: int) -> None:
        super().__init__(body, None)
        self._stream = stream
        self._seq = seq

    def cancelled(self) -> bool:
        return self._stream.cancelled() or _task_cancelling()

    async def acknowledge(self) -> None:
        await self._stream.acknowledge(self._seq)


_IO = _StreamIO | _UnaryIO


def _http_meta(status: int, headers: list[tuple[str, str]]) -> runner_pb2.HttpRespMeta:
    return runner_pb2.HttpRespMeta(status_code=status, headers=[
        runner_pb2.HttpHeader(key=k, value=v) for k, v in headers])


def _kind(msg: Any) -> str:
    if msg is grpc.aio.EOF:
        return "end of stream"
    kind = msg.WhichOneof("body")
    return str(kind) if kind else "an empty ClientMsg"


class RunnerService(runner_pb2_grpc.RunnerServicer):
    """TryExec / Call / Status / Close over a SlotPool and a WarmCache.

    TryExec answers, in order of checks:

    * first message not ``try`` (e.g. ``data``) -> status INVALID_ARGUMENT
      "first message must be try, got data";
    * ``models_call_json`` unusable -> INVALID_ARGUMENT "models_call_json: ...";
    * ``memory`` above the runner's total -> ``finished{success=false,
      errorCode=507, memory_mb_total=N}`` (never fits here; try another runner);
    * draining, or no slot+memory within ``nack_after_ms`` -> NACK:
      ``finished{success=false, errorCode=503, errorStr="Timed out - server too busy"}``
      as the only message, stream ends OK;
    * accepted; a try with ``ack`` (and ``--ack true``) is acknowledged now
      (``RunnerMsg{ack}``) and started only after the first body frame, the
      LB's go (dropped, never run, if the stream ends or 10 s pass first);
      nothing is started for a stream already cancelled;
    * then a second ``try`` or a stream ending without ``eof`` ->
      INVALID_ARGUMENT; a body over ``max_body_bytes`` ->
      ``finished{success=false, errorCode=413, errorUser=true,
      errorStr="request body exceeds N bytes"}`` (a finished, not a status, so
      the LB reports it as committed instead of retrying on every runner);
    * otherwise ``result_start``, body ``data`` frames (last has eof), ``finished``.

    After acceptance the call can still fail, always with a ``finished`` and a
    code other than 503: 500 "injected failure" (``--fail-rate``, no
    ``result_start``), 502 with the function's error (config ``fail``,
    errorUser), 504 "Timed out" (the call's ``timeout`` passed). A detached
    call gets ``result_start{202}`` and an empty eof frame as soon as its body
    is read, then ``finished`` once the function ran; from the 202 on it is
    the runner's: the stream being cancelled or broken (the LB stopping) no
    longer stops it, it runs to its end in its slot. A sync response over
    the LB's ``fnlb.max_response_bytes`` (TryCall.extensions) is
    ``finished{success=false, errorCode=509, errorUser=true}`` with no
    ``result_start``. Otherwise a client cancel stops the function at once
    and frees its slot.

    Call (the unary fast path) runs the same steps through ``_serve`` and
    answers what TryExec would have sent, in one ``CallReply``: ``http`` (the
    result_start meta), the whole ``body`` and ``finished`` (a NACK is a reply
    with only ``finished{503}``); bad input is INVALID_ARGUMENT, and so is a
    detached call (it is acknowledged before it runs: TryExec only).
    """

    def __init__(self, config: StubConfig, health_servicer: health.aio.HealthServicer, *,
                 rng: random.Random | None = None,
                 exit_process: Callable[[int], object] = os._exit) -> None:
        self._cfg = config
        self._health = health_servicer
        self._rng = rng if rng is not None else random.Random(config.seed)
        self._exit_process = exit_process
        self.pool = SlotPool(config.slots, config.memory_mb)
        self.warm = WarmCache(config.warm_cache)
        self._pulls: dict[str, asyncio.Future[None]] = {}  # image -> its fake pull
        self.counters = Counters()
        self.runner_id = config.runner_id
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._call_streams: set[_CallStream] = set()
        # Detached calls whose stream went away after their 202: they run on.
        self._orphans: set[asyncio.Task[None]] = set()
        self._idle.set()
        self._close_allow = config.close_patterns()
        self._close_refused = 0
        self._close_refused_logged = -1e9
        self.features = (FEATURES + ((ACK_FEATURE,) if config.ack else ())
                         + ((WATCH_FEATURE,) if config.watch else ()))
        # Runner/Watch: whatever a watching LB places by pushes a status.
        self.feed = StatusFeed(self.status_message, min_interval=config.status_min_interval,
                               heartbeat=config.watch_heartbeat)
        self.pool.on_change = self.warm.on_change = self.feed.changed
        # One line per ended call, for fn's RunnerProtocol/StreamLogs.
        self.call_logs = CallLogs()

    # -- drain ---------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting calls (NACK them) and report NOT_SERVING. Idempotent."""
        if self.draining:
            return
        self.draining = True
        self.feed.changed()
        log.info("draining", extra=kv(active=self.active))
        for service in ("", RUNNER_SERVICE, FN_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def wait_idle(self, max_wait: float | None = None) -> bool:
        """Wait until no accepted call is in flight; False if ``max_wait`` seconds passed first."""
        try:
            async with asyncio.timeout(max_wait):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- RPCs ----------------------------------------------------------------

    async def Status(self, request: Any, context: Any) -> runner_pb2.RunnerStatus:
        return self.status_message()

    async def Watch(self, request: runner_pb2.WatchRequest, context: Any) -> None:
        """The status pushed on change and as heartbeats (runner.proto, THE WATCH)."""
        if not self._cfg.watch:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "Runner/Watch is off (--watch false): poll Status")
        await self.feed.serve(request, context)

    def status_message(self) -> runner_pb2.RunnerStatus:
        """What Status answers and Watch pushes."""
        now = now_rfc3339()
        c = self.counters
        c.status_calls += 1
        return runner_pb2.RunnerStatus(
            active=self.active,
            id=self.runner_id,
            runner_id=self.runner_id,
            createdAt=now,
            startedAt=now,
            completedAt=now,
            requestsReceived=c.received,
            requestsHandled=c.handled,
            requestsNacked=c.nacked,
            draining=self.draining,
            drained=self.draining and self.active == 0,
            slots_total=self.pool.slots_total,
            slots_free=self.pool.slots_free,
            memory_mb_total=self.pool.memory_mb_total,
            memory_mb_free=self.pool.memory_mb_free,
            warm_slots=self.warm.keys(),
            features=self.features,
            customStatus={
                "cold_starts": str(c.cold_starts),
                "warm_hits": str(c.warm_hits),
                "canceled": str(c.canceled),
                "failed": str(c.failed),
                "completed": str(c.completed),
                "bad_requests": str(c.bad_requests),
                "started": str(c.started),
                "waiting": str(self.pool.waiting),
                "status_calls": str(c.status_calls),
            },
        )

    async def Close(self, request: runner_pb2.CloseRequest,
                    context: Any) -> runner_pb2.CloseResponse:
        # Draining takes a runner out of service: only the LB (--close-allow) may.
        caller = caller_of(context)
        decision = close_decision(caller, self._close_allow, tls=self._cfg.tls,
                                  allow_insecure=self._cfg.allow_insecure_close)
        if not decision.allowed:
            self._close_refused += 1
            now = time.monotonic()
            if now - self._close_refused_logged >= 10.0:  # refusals must not flood the log
                self._close_refused_logged = now
                log.warning("close refused", extra=kv(
                    peer=context.peer(), caller=",".join(caller.identities[:3])[:200],
                    refused_so_far=self._close_refused))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"Runner/Close refused: {decision.reason}")
        log.info("close accepted", extra=kv(peer=context.peer(), rule=decision.reason))
        await self.drain()
        if request.wait:
            remaining = context.time_remaining()
            # Answer just before the caller's deadline rather than be cut off by it.
            await self.wait_idle(None if remaining is None else max(remaining - 0.05, 0.0))
        return runner_pb2.CloseResponse(active=self.active, drained=self.active == 0)

    async def TryExec(self, request_iterator: Any, context: Any) -> None:
        await self.exec_stream(context)

    async def exec_stream(self, context: Any, *, acks: bool = True) -> None:
        """One call over a TryExec-shaped stream; fn's Engage passes ``acks=False``."""
        requests = _Requests(context)
        try:
            first = await requests.read()
            created = _now()  # fn: createdAt is when the runner got the call
            if _kind(first) != "try":
                raise ProtocolError(f"first message must be try, got {_kind(first)}")
        except ProtocolError as e:
            await self._bad_request(e, _StreamIO(requests, context))
            return
        io = _StreamIO(requests, context) if acks else _FnStreamIO(requests, context)
        tc = _try_of(first)
        if tracing.enabled:
            return await tracing.serve(self._serve, "TryExec", tc, created, io, context)
        await self._serve(tc, created, io)

    async def Call(self, request: runner_pb2.CallRequest, context: Any) -> runner_pb2.CallReply:
        """The unary fast path: TryExec's logic, the whole call in one message each way."""
        return await self._call(request, context)

    async def Calls(self, request_iterator: Any, context: Any) -> None:
        """The call stream: many Calls on one stream, replies batched as they are ready."""
        stream = _CallStream(self, context)
        self._call_streams.add(stream)
        try:
            await stream.run()
        finally:
            self._call_streams.discard(stream)

    def end_call_streams(self) -> None:
        """Let every Calls stream end with OK once its calls are answered (server stopping)."""
        for stream in self._call_streams:
            stream.end()

    async def _call(self, request: runner_pb2.CallRequest, context: Any | None,
                    io: _UnaryIO | None = None) -> runner_pb2.CallReply:
        created = _now()
        if io is None:
            io = _UnaryIO(request.body, context)
        # `try` is a Python keyword, hence getattr.
        if tracing.enabled:
            await tracing.serve(self._serve, "Call" if context is not None else "Calls",
                                getattr(request, "try"), created, io, context)
        else:
            await self._serve(getattr(request, "try"), created, io)
        reply = io.reply
        if len(reply.body) > _REPLY_BODY_LIMIT:
            # The function ran (committed), but its answer cannot travel in one
            # message: fail clearly rather than with gRPC's RESOURCE_EXHAUSTED.
            self.counters.failed += 1
            fin = reply.finished
            fin.success, fin.errorCode, fin.errorUser = False, 502, False
            fin.errorStr = (f"response body of {len(reply.body)} bytes does not fit in one "
                            f"Call reply ({_REPLY_BODY_LIMIT} bytes at most); use TryExec")
            reply.ClearField("http")
            reply.ClearField("body")
        return reply

    # -- one call, whatever the RPC shape -----------------------------------

    async def _serve(self, tc: runner_pb2.TryCall, created: _Instant, io: _IO) -> None:
        try:
            if self._cfg.hang_ms:
                await asyncio.sleep(self._cfg.hang_ms / 1000)
            call = parse_call(tc.models_call_json, tc.slot_hash_id, tc.extensions)
            if call.detached and not io.streams:
                # A detached call is acknowledged (202) before it runs: only a stream can.
                raise BadCall("detached calls are served by TryExec only, not Call")
        except BadCall as e:
            await self._bad_request(e, io)
            return
        if call.memory_mb > self.pool.memory_mb_total:
            # Not busy: no wait can make it fit here (but a bigger runner may).
            await self._does_not_fit(call, created, io)
            return

        self.counters.received += 1
        ack = tc.ack and self._cfg.ack and io.acks
        try:
            if io.cancelled():
                raise asyncio.CancelledError  # the LB gave up already: start nothing
            lease = await self._admit(call)
            if lease is not None:
                if call.detached and isinstance(io, _StreamIO):
                    await self._detached(call, created, io, lease, ack)
                    return
                with lease:
                    await self._accepted(call, created, io, ack)
                return
        except asyncio.CancelledError:
            # The client went away (cancel, deadline) or the server is stopping:
            # the function stopped where it was and the slot is given back.
            self.counters.canceled += 1
            log.info("call canceled", extra=kv(call_id=call.id, fn_id=call.fn_id))
            raise
        await self._nack(call, io)

    async def _detached(self, call: ParsedCall, created: _Instant, io: _StreamIO,
                        lease: Lease, ack: bool) -> None:
        """Run an accepted detached call so that, once its 202 is sent, it outlives its stream.

        fn answers a detached call 202 and runs it without the client: the
        LB stopping or restarting after the 202 must not cancel it
        (protos/fnlb/v1/runner.proto, DETACHED CALLS). Before the 202 a
        cancel stops it like any call. An orphan still holds its slot and
        counts as active, so a drain waits for it; ``cancel_orphans`` ends
        those still running when the server stops.
        """
        async def run() -> None:
            with lease:
                await self._accepted(call, created, io, ack)

        task = asyncio.create_task(run(), name=f"detached-{call.id}")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not io.detached_ack:
                task.cancel()
                await asyncio.wait([task])
                raise
            io.orphaned = True
            self._orphans.add(task)
            task.add_done_callback(lambda t: self._orphan_done(t, call))
            log.info("stream gone after 202; detached call runs on",
                     extra=kv(call_id=call.id, fn_id=call.fn_id))
        except Exception as e:
            if not io.detached_ack:
                raise
            # The function ran; sending its finished failed (the stream broke
            # before the handler was told): nobody is left to answer.
            log.warning("detached call ended; could not report it",
                        extra=kv(call_id=call.id, error=repr(e)))

    def _orphan_done(self, task: asyncio.Task[None], call: ParsedCall) -> None:
        self._orphans.discard(task)
        if task.cancelled():
            self.counters.canceled += 1
            log.info("call canceled", extra=kv(call_id=call.id, fn_id=call.fn_id))
            return
        error = task.exception()
        if error is not None:
            log.warning("detached call failed after its stream was gone",
                        extra=kv(call_id=call.id, error=repr(error)))
            return
        log.info("detached call ended", extra=kv(call_id=call.id, fn_id=call.fn_id))

    async def cancel_orphans(self) -> None:
        """Cancel the detached calls still running without a stream (server stopping)."""
        tasks = list(self._orphans)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- call steps ----------------------------------------------------------

    async def _admit(self, call: ParsedCall) -> Lease | None:
        if self.draining:
            return None
        lease = await self.pool.acquire(call.memory_mb, self._cfg.nack_after_ms / 1000)
        if lease is not None and self.draining:
            # Drain began while we waited: a draining runner accepts nothing.
            lease.release()
            return None
        return lease

    async def _nack(self, call: ParsedCall, io: _IO) -> None:
        self.counters.nacked += 1
        log.debug("nack", extra=kv(call_id=call.id, draining=self.draining))
        if self._cfg.nack_delay_ms:
            await asyncio.sleep(self._cfg.nack_delay_ms / 1000)
        await io.finish(runner_pb2.CallFinished(
            success=False, errorCode=503, errorStr=TOO_BUSY, details=call.id,
            slots_free=self.pool.slots_free, memory_mb_free=self.pool.memory_mb_free))
        await io.discard_rest()

    async def _bad_request(self, error: Exception, io: _IO) -> None:
        self.counters.bad_requests += 1
        log.info("bad request", extra=kv(error=str(error)))
        await io.discard_rest()
        await io.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def _does_not_fit(self, call: ParsedCall, created: _Instant, io: _IO) -> None:
        self.counters.bad_requests += 1
        total = self.pool.memory_mb_total
        log.info("call does not fit", extra=kv(call_id=call.id, memory_mb=call.memory_mb,
                                               memory_mb_total=total))
        fin = self._finished(call, created, error=CallRejected(
            507, f"call asks for {call.memory_mb} MiB of memory, this runner has "
                 f"{total} MiB in total"))
        fin.memory_mb_total = total
        await io.finish(fin)
        await io.discard_rest()

    async def _refuse(self, call: ParsedCall, created: _Instant, error: CallRejected,
                      io: _IO) -> None:
        self.counters.bad_requests += 1
        log.info("call refused", extra=kv(call_id=call.id, code=error.code, error=error.message))
        await io.finish(self._finished(call, created, error=error))
        await io.discard_rest()

    async def _accepted(self, call: ParsedCall, created: _Instant, io: _IO, ack: bool) -> None:
        self.counters.handled += 1
        nth = self.counters.handled
        self.active += 1
        self._idle.clear()
        log.debug("call accepted", extra=kv(call_id=call.id, fn_id=call.fn_id, slot=call.slot_key))
        try:
            try:
                if ack:
                    if io.cancelled():
                        raise asyncio.CancelledError  # gave up while we took the slot
                    # The commit point; the function starts only after the go.
                    await io.acknowledge()
                body = await io.read_body(self._cfg.max_body_bytes)
            except ProtocolError as e:
                await self._bad_request(e, io)
                return
            except CallRejected as e:
                await self._refuse(call, created, e, io)
                return
            except NoGo as e:
                self.counters.canceled += 1
                log.warning("call dropped", extra=kv(call_id=call.id, error=str(e)))
                await io.finish(self._finished(call, created, error=CallRejected(500, str(e))))
                return
            if io.cancelled():
                raise asyncio.CancelledError  # cancelled since: start nothing
            await self._execute(call, created, body, nth, io)
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()
                if self.draining:
                    self.feed.changed()  # drained now

    async def _execute(self, call: ParsedCall, created: _Instant, body: bytes, nth: int,
                       io: _IO) -> None:
        if self._cfg.fail_rate and self._rng.random() < self._cfg.fail_rate:
            self.counters.failed += 1
            now = _now()
            await io.finish(self._log_end(call, self._finished(
                call, created, now, now, error=CallRejected(500, "injected failure"))))
            return
        if call.detached:
            # fn acknowledges a detached call as soon as it is taken (202), then runs it.
            # The call is ours from the moment we answer it: a stream that goes
            # away while the 202 is on its way must not stop it (the LB may
            # already have read the 202 and told its client).
            io.detached_ack = True
            try:
                await io.start(202, [])
                await io.send_body(b"")
            except Exception as e:  # whatever the dying stream raises: nobody listens
                io.orphaned = True
                log.debug("stream gone while sending 202; detached call runs on",
                          extra=kv(call_id=call.id, error=repr(e)))
            await self._maybe_crash(call, nth)
        startup = await self._warm_up(call)
        started = _now()
        self.counters.started += 1
        log.debug("function started", extra=kv(call_id=call.id))
        result: FunctionResult | None = None
        error: CallRejected | None = None
        try:
            async with asyncio.timeout(call.timeout_s or None):
                result = await run_function(call.spec, body, call.header("Content-Type"))
        except FunctionFailed as e:
            error = CallRejected(502, str(e), user_error=True)
        except TimeoutError:
            error = CallRejected(504, "Timed out", user_error=True)  # fn's ErrCallTimeout
        if error is not None or result is None:
            self.counters.failed += 1
            await self._maybe_crash(call, nth)
            await io.finish(self._log_end(
                call, self._finished(call, created, started, _now(), error=error,
                                     startup=startup)))
            return
        limit = call.max_response_bytes
        if not call.detached and limit and len(result.body) > limit:
            # Fail before result_start: the LB could not carry it, and the
            # client gets a clear error instead of a cut-off body.
            self.counters.failed += 1
            await io.finish(self._log_end(call, self._finished(
                call, created, started, _now(), error=CallRejected(
                    RESPONSE_TOO_LARGE,
                    f"response body of {len(result.body)} bytes exceeds the LB's limit of "
                    f"{limit} bytes (--max-response-bytes)", user_error=True),
                startup=startup)))
            return
        self.counters.completed += 1
        if not call.detached:
            headers = [("x-runner-id", self.runner_id)]
            if result.content_type:
                headers.append(("content-type", result.content_type))
            await io.start(result.status, headers)
            await self._maybe_crash(call, nth)
            await io.send_body(result.body)
        await io.finish(self._log_end(
            call, self._finished(call, created, started, _now(), startup=startup),
            result.status))

    def _log_end(self, call: ParsedCall, fin: runner_pb2.CallFinished,
                 status: int | None = None) -> runner_pb2.CallFinished:
        """Keep the call's log line for StreamLogs; returns ``fin`` unchanged."""
        took_ms = fin.executionDuration / 1e6
        if fin.success:
            text = f"call {call.id} done: status {status}, {took_ms:.1f} ms"
        else:
            text = f"call {call.id} failed: {fin.errorCode} {fin.errorStr}"
        self.call_logs.add(app_id=call.app_id, fn_id=call.fn_id, container_id=call.slot_key,
                           call_id=call.id, text=text, stderr=not fin.success)
        return fin

    async def _warm_up(self, call: ParsedCall) -> _Startup:
        """Start the function unless it is warm: pull its image (once per image on
        this runner), then the cold start. What it took is reported in ``finished``."""
        if self.warm.hit(call.slot_key):
            self.counters.warm_hits += 1
            return _Startup()
        pull_ns = await self._pull(call.image)
        cold_ns = 0
        if self._cfg.cold_start_ms:
            t0 = time.monotonic_ns()
            await asyncio.sleep(self._cfg.cold_start_ms / 1000)
            cold_ns = time.monotonic_ns() - t0
        # Counted only once the start completed: a cancelled start warmed nothing.
        self.counters.cold_starts += 1
        for evicted in self.warm.add(call.slot_key):
            log.debug("evicted warm function", extra=kv(slot=evicted))
        return _Startup(pull_ns, cold_ns)

    async def _pull(self, image: str) -> int:
        """The fake image pull (--image-pull-ms): the first call for ``image`` starts it,
        calls that come while it runs wait for the same pull, later ones find it
        cached. Returns the ns this call waited."""
        if not self._cfg.image_pull_ms:
            return 0
        pull = self._pulls.get(image)
        if pull is None:
            pull = self._pulls[image] = asyncio.ensure_future(
                asyncio.sleep(self._cfg.image_pull_ms / 1000))
        if pull.done():
            return 0
        t0 = time.monotonic_ns()
        await asyncio.shield(pull)  # a cancelled call leaves the pull to the others
        return time.monotonic_ns() - t0

    async def _maybe_crash(self, call: ParsedCall, nth: int) -> None:
        if call.spec.crash or nth == self._cfg.crash_after:
            log.warning("crashing on purpose", extra=kv(call_id=call.id, nth_call=nth))
            # A gRPC client drops messages it has received but not yet read once
            # the transport breaks (chttp2 discards a stream's buffered frames
            # on error). Dying on the spot could thus erase result_start and
            # turn "lost mid-call" into "never reached"; give the client a moment.
            await asyncio.sleep(_CRASH_LINGER_S)
            self._exit_process(3)

    def _finished(self, call: ParsedCall, created: _Instant, started: _Instant | None = None,
                  completed: _Instant | None = None, *,
                  error: CallRejected | None = None,
                  startup: _Startup | None = None) -> runner_pb2.CallFinished:
        # THE PIGGYBACK: free slots and memory now, this call's still taken
        # (every finished is written while the call holds its lease).
        fin = runner_pb2.CallFinished(
            success=error is None, details=call.id, image=call.image,
            createdAt=rfc3339_ms(created.wall), slots_free=self.pool.slots_free,
            memory_mb_free=self.pool.memory_mb_free)
        if startup is not None:
            # As fn's runners report them; both are part of schedulerDuration.
            fin.imagePullWaitDuration = startup.image_pull_ns
            fin.ctrCreateDuration = startup.cold_start_ns
        if error is not None:
            fin.errorCode = error.code
            fin.errorStr = error.message
            fin.errorUser = error.user_error
        if started is not None:
            fin.startedAt = rfc3339_ms(started.wall)
            fin.schedulerDuration = started.mono_ns - created.mono_ns
            if completed is not None:
                fin.completedAt = rfc3339_ms(completed.wall)
                fin.executionDuration = completed.mono_ns - started.mono_ns
        return fin


class StubServer:
    """A runner stub serving on ``config.listen``: Runner, fn's RunnerProtocol, Health, reflection.

    ``start()`` binds and logs ``msg=listening addr=HOST:PORT``; ``shutdown(grace)``
    drains then stops; ``stop(grace)`` stops at once and may be called again
    (the shortest grace wins, as in grpc.aio).
    """

    def __init__(self, config: StubConfig, *, rng: random.Random | None = None,
                 exit_process: Callable[[int], object] = os._exit,
                 announce: bool = True) -> None:
        self.config = config
        self._announce = announce  # False: no listening/stopped lines (a RunnerHost's runner)
        self._rng = rng
        self._exit_process = exit_process
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._service: RunnerService | None = None
        self._addr = ""
        self._stopping = False
        self.tls_credentials: Any = None

    def reload_tls(self) -> None:
        """SIGHUP: re-read the certificate files now."""
        if self.tls_credentials is not None:
            self.tls_credentials.reload()

    @property
    def addr(self) -> str:
        """HOST:PORT actually bound (port 0 resolved); "" before start()."""
        return self._addr

    @property
    def service(self) -> RunnerService:
        if self._service is None:
            raise RuntimeError("StubServer not started")
        return self._service

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("StubServer already started")
        cfg = self.config
        tls = cfg.read_tls()  # before binding: a bad file fails fast, naming its flag
        host, port = split_host_port(cfg.listen)
        bind_host = f"[{host}]" if ":" in host else host
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        self._health = health.aio.HealthServicer()
        service = RunnerService(cfg, self._health, rng=self._rng,
                                exit_process=self._exit_process)
        runner_pb2_grpc.add_RunnerServicer_to_server(service, server)
        # fn's LB calls the same runner as /RunnerProtocol/Engage and /Status.
        fn_pb2_grpc.add_RunnerProtocolServicer_to_server(FnRunnerService(service), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (RUNNER_SERVICE, FN_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        try:
            if tls is None:
                bound = server.add_insecure_port(f"{bind_host}:{port}")
            else:
                # Reloading credentials: rotated certificate files (or SIGHUP)
                # reach new connections without a restart; live calls keep theirs.
                from fnlb.tls import ReloadingServerCredentials, TLSFiles

                self.tls_credentials = ReloadingServerCredentials(
                    TLSFiles(Path(cfg.tls_cert), Path(cfg.tls_key), Path(cfg.tls_ca)),
                    require_client_auth=True)
                bound = server.add_secure_port(f"{bind_host}:{port}",
                                               self.tls_credentials.credentials())
        except RuntimeError as e:
            raise StartupError(f"--listen {cfg.listen}: cannot bind: {e}") from None
        if not bound:
            raise StartupError(f"--listen {cfg.listen}: cannot bind")
        self._addr = f"{bind_host}:{bound}"
        service.runner_id = cfg.runner_id or self._addr
        await server.start()
        self._server, self._service = server, service
        for name in ("", RUNNER_SERVICE, FN_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._announce:
            log.info("listening", extra=kv(
                addr=self._addr, runner_id=service.runner_id, slots=cfg.slots,
                memory_mb=cfg.memory_mb, warm_cache=cfg.warm_cache, tls=str(cfg.tls).lower()))

    async def drain(self) -> None:
        """NACK every new call from now on; in-flight calls go on."""
        await self.service.drain()

    async def shutdown(self, grace: float) -> None:
        """Drain, wait up to ``grace`` seconds for in-flight calls, then stop."""
        if self._server is None:
            return
        deadline = time.monotonic() + grace
        await self.drain()
        if self.service.active:
            log.info("waiting for in-flight calls", extra=kv(
                active=self.service.active, grace=format_duration(grace)))
        idle = await self.service.wait_idle(grace)
        if not idle:
            log.warning("drain grace over, canceling calls", extra=kv(active=self.service.active))
        # Streams still open are NACKs on their way out (or calls past the grace).
        await self.stop(max(deadline - time.monotonic(), 0.0))

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; calls still running after ``grace`` seconds are cancelled."""
        if self._server is None:
            return
        first = not self._stopping
        self._stopping = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        self.service.end_call_streams()
        self.service.feed.end()  # Watch streams end with OK: "going away"
        await self._server.stop(grace)
        await self.service.cancel_orphans()
        if first and self._announce:
            log.info("stopped", extra=kv(addr=self._addr))

    async def wait_closed(self) -> None:
        """Return once the server has stopped (at once if it never started)."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> StubServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop(0)


class _CallStream:
    """One Runner/Calls stream: a task per call, replies written in batches.

    The reader starts a task for every CallRequest (and cancels those the LB
    gives up on); the writer sends whatever replies are ready as one
    ReplyBatch, so under load one message carries many replies. When the LB
    ends the stream, the calls still running finish and are answered; when
    the stream breaks, they are cancelled like any call whose client left.
    ``end()`` (server stopping): once every call read so far is answered the
    stream ends with OK, which tells the LB that what it wrote after that was
    never read and never run. A call that asked for an ack is acknowledged in
    ``ReplyBatch.acks`` and waits for its seq in ``CallBatch.go``; once reading
    ends, calls still waiting for their go are dropped unanswered (never run).
    """

    def __init__(self, service: RunnerService, context: Any) -> None:
        self._service = service
        self._context = context
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._ready: list[runner_pb2.CallReply] = []
        self._acks: list[int] = []
        self._gos: dict[int, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._reading = True
        self._ending = False

    def cancelled(self) -> bool:
        ctx = self._context
        return bool(ctx.cancelled() or ctx.done())

    async def acknowledge(self, seq: int) -> None:
        """Ack call ``seq`` and wait for its go; NoGo (never started) if it does not come."""
        if not self._reading:
            raise asyncio.CancelledError  # no go can come any more
        go = asyncio.get_running_loop().create_future()
        self._gos[seq] = go
        self._acks.append(seq)
        self._wake.set()
        try:
            async with asyncio.timeout(_GO_WAIT_S):
                await go
        except TimeoutError:
            raise NoGo(f"acknowledged, but no go came within {_GO_WAIT_S:g}s: "
                       "dropped, not run") from None
        finally:
            self._gos.pop(seq, None)

    def end(self) -> None:
        self._ending = True
        self._wake.set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            while ((self._reading and not self._ending) or self._tasks or self._ready
                   or self._acks):
                await self._wake.wait()
                self._wake.clear()
                while self._ready or self._acks:
                    acks, self._acks = self._acks, []
                    await self._context.write(runner_pb2.ReplyBatch(replies=self._take(),
                                                                    acks=acks))
            if reader.done():
                await reader  # surfaces a read error as the stream's status
        finally:
            reader.cancel()
            for task in list(self._tasks.values()):
                task.cancel()

    def _take(self) -> list[runner_pb2.CallReply]:
        """Ready replies for one ReplyBatch: up to _BATCH_BYTES of bodies (at least one reply)."""
        n, size = 0, 0
        for reply in self._ready:
            size += len(reply.body)
            if n and size > _BATCH_BYTES:
                break
            n += 1
        batch, self._ready = self._ready[:n], self._ready[n:]
        return batch

    async def _read(self) -> None:
        try:
            while True:
                batch = await self._context.read()
                if batch is grpc.aio.EOF:
                    return
                for seq in batch.cancel:
                    task = self._tasks.pop(seq, None)
                    if task is not None:
                        task.cancel()
                for seq in batch.go:
                    go = self._gos.get(seq)
                    if go is not None and not go.done():
                        go.set_result(None)
                for request in batch.calls:
                    if not self._ending:
                        self._start(request)
        finally:
            self._reading = False
            for go in self._gos.values():
                go.cancel()  # no go can come: drop those calls, never run
            self._wake.set()

    def _start(self, request: runner_pb2.CallRequest) -> None:
        seq = request.seq
        if seq in self._tasks:
            self._service.counters.bad_requests += 1
            self._reply(seq, runner_pb2.CallReply(finished=runner_pb2.CallFinished(
                success=False, errorCode=400,
                errorStr=f"seq {seq} is already in flight on this stream")))
            return
        task = asyncio.create_task(self._one(request))
        self._tasks[seq] = task

    async def _one(self, request: runner_pb2.CallRequest) -> None:
        seq = request.seq
        try:
            reply = await self._service._call(request, None,
                                              _CallsIO(request.body, self, seq))
        except asyncio.CancelledError:
            return  # the LB cancelled it: no reply
        finally:
            self._tasks.pop(seq, None)
            self._wake.set()
        self._reply(seq, reply)

    def _reply(self, seq: int, reply: runner_pb2.CallReply) -> None:
        reply.seq = seq
        self._ready.append(reply)
        self._wake.set()
