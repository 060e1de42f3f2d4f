"""The LB's side of Runner/TryExec (the fn protocol): one stream per call, the
body in frames, for every call the Calls stream and Call cannot take.

    attempt = await try_exec_stream(stub, call, answers, keep, acks=True, watch=watch)

With ``acks`` (the runner lists "ack") the try asks for an acknowledgement and
the body, the LB's go, follows only once it is read: before it the call is not
placed whatever happens (runner.proto, THE ACKNOWLEDGEMENT).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from fnlb import tracing
from fnlb.errors import RunnerError, RunnerUnreachable, ServerTooBusy
from fnlb.logs import kv
from fnlb.runnerpool import DETACHED, Attempt, RunnerCall
from fnlb.transport import commit
from fnlb.transport._accept import AcceptWatch
from fnlb.transport._answers import Answers
from fnlb.transport._response import MAX_RESPONSE_BYTES_KEY, StreamingSink, is_streaming, too_large
from fnlb.transport.commit import Verdict
from fnlb.transport.fn_runner import FnRunnerStub
from fnlb.v1 import runner_pb2, runner_pb2_grpc

__all__ = ["CHUNK_SIZE", "DETACHED_DRAIN", "try_call", "try_exec_stream"]

# GrpcRunner's logger, whichever of its modules logs.
log = logging.getLogger("fnlb.transport.grpc_runner")

# Request body frame size. fn's LB uses 10 KiB (MaxDataChunk), but every
# gRPC message costs the same fixed work whatever its size: 256 KiB frames cut
# the LB's CPU for a 1 MiB call by a third (make bench). Still fn-compatible:
# fn's pure runner copies DataFrames of any size into the function's input;
# the bound is the runner's gRPC receive limit (Go's default 4 MiB, the stub's
# 64 MiB).
CHUNK_SIZE = 256 * 1024
# The name of the task that reads an accepted detached call's result.
DETACHED_DRAIN = "fnlb-detached-drain"


def try_call(call: RunnerCall, max_response_bytes: int, *,
             ack: bool = False, into: runner_pb2.TryCall | None = None) -> runner_pb2.TryCall:
    """The ``try`` that opens a TryExec stream; Call and Calls requests carry it too.

    Its extensions tell the runner the LB's response size limit; ``ack`` asks
    the runner (one that lists "ack") to acknowledge the call first. ``into``:
    fill this (empty) TryCall, the field of the message that carries it, rather
    than a new one that message's constructor would copy.
    """
    tc = runner_pb2.TryCall() if into is None else into
    tc.models_call_json = call.model_json
    tc.slot_hash_id = call.slot_hash_id
    tc.extensions.update(call.extensions)
    tc.ack = ack
    tc.extensions[MAX_RESPONSE_BYTES_KEY] = str(max_response_bytes)
    if tracing.enabled:
        tracing.inject(tc.extensions)  # traceparent: the runner continues the trace
    return tc


async def _send_try(stream: Any, call: RunnerCall, max_response_bytes: int, *,
                    ack: bool = False) -> None:
    # Built in place: a ClientMsg(try=...) would copy the TryCall into itself.
    # `try` is a Python keyword, hence getattr.
    msg = runner_pb2.ClientMsg()
    try_call(call, max_response_bytes, ack=ack, into=getattr(msg, "try"))
    await stream.write(msg)


class _Sent:
    """Whether writing the ``try`` failed: gRPC refused it because the stream had
    already ended, so the runner cannot have the call (commit.rpc_failed's ``sent``).
    A write that did not fail counts as sent, even before it returned."""

    __slots__ = ("try_refused",)

    def __init__(self) -> None:
        self.try_refused = False


async def _send(stream: Any, call: RunnerCall, max_response_bytes: int,
                sent: _Sent | None = None) -> None:
    """Write ``try``, the body frames (last with eof) and half-close."""
    try:
        await _send_try(stream, call, max_response_bytes)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        if sent is not None:
            sent.try_refused = True
        raise
    await _send_body(stream, call)


def _data_msg(data: bytes, eof: bool) -> runner_pb2.ClientMsg:
    # Filled in place: ClientMsg(data=DataFrame(...)) would copy the frame, its
    # bytes included, into the ClientMsg (a 256 KiB frame: ~135 us).
    msg = runner_pb2.ClientMsg()
    frame = msg.data
    frame.data = data
    frame.eof = eof
    return msg


async def _send_body(stream: Any, call: RunnerCall) -> None:
    """Write the body frames (last with eof) and half-close."""
    body = call.request_body()
    n = len(body)
    if n <= CHUNK_SIZE:
        # The common case: the body as it is, no slicing copy.
        await stream.write(_data_msg(body, True))
    else:
        view = memoryview(body)
        for off in range(0, n, CHUNK_SIZE):
            end = off + CHUNK_SIZE
            await stream.write(_data_msg(bytes(view[off:end]), end >= n))
    await stream.done_writing()


async def _quietly(sending: Awaitable[None]) -> None:
    try:
        await sending
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # The stream ended while we were sending (NACK, runner gone): the
        # reader sees why.
        pass


async def _start_sending(sending: Awaitable[None], call: RunnerCall) -> asyncio.Task[None] | None:
    """Send now (small body) or in a task (big body), which is returned."""
    if len(call.request_body()) <= CHUNK_SIZE:
        # Two small messages always fit the HTTP/2 window: write them
        # before reading, in this task.
        await _quietly(sending)
        return None
    # A big body is written while the answer is read, as fn does:
    # a runner may stream its answer before it has read all input.
    return asyncio.create_task(_quietly(sending))


async def try_exec_stream(stub: runner_pb2_grpc.RunnerStub | FnRunnerStub, call: RunnerCall,
                          answers: Answers,
                          keep: Callable[[asyncio.Task[None]], None], *,
                          acks: bool = False, watch: AcceptWatch | None = None) -> Attempt:
    """One TryExec stream (the fn protocol): every call a Call cannot take, and
    every call to an fn runner (``FnRunnerStub``: its TryExec is fn's Engage).

    ``acks``: the runner lists "ack": ask for an acknowledgement and send the
    body (the go) only once it is read; until then any failure, or no answer
    within the accept deadline of ``watch``, is not placed. Without it the
    deadline only makes ``watch`` report the runner (the call goes on).
    """
    # Reader/writer style, not a request iterator: for one the iterator
    # grpc.aio runs an extra task per stream (measured: ~5% of LB CPU).
    stream = stub.TryExec(metadata=tracing.metadata() if tracing.enabled else None)
    committed = False
    finished: runner_pb2.CallFinished | None = None
    sink = call.response
    detached = call.model.type == DETACHED
    sender: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None
    limit = answers.max_response_bytes
    received = 0
    sent = _Sent()
    # The first read is asked for before anything is written. A runner may
    # NACK and end the stream without reading the body (fn's pure runner
    # returns from Engage at once): a write after that fails, and with no
    # read pending grpc.aio then fails the read too ("Internal error from
    # Core") and the NACK is lost; with one pending the NACK is read
    # (measured: 186 of 300 NACKs lost without, 0 with).
    first: asyncio.Future[Any] | None = None
    try:
        if acks:
            # The try alone: the body is the go, sent once the ack is read.
            await _quietly(_send_try(stream, call, limit, ack=True))
            if watch is not None and watch.timeout is not None:
                deadline = asyncio.get_running_loop().time() + watch.timeout
        else:
            first = asyncio.ensure_future(stream.read())
            sender = await _start_sending(_send(stream, call, limit, sent), call)
            if watch is not None:
                timer = watch.watch(time.monotonic())
        while True:
            if deadline is not None and not committed:
                try:
                    async with asyncio.timeout_at(deadline):
                        msg = await stream.read()
                except TimeoutError:
                    # No go was sent: the runner cannot start it. The stream is
                    # cancelled (finally) and the placer tries the next runner.
                    assert watch is not None
                    return Attempt(False, RunnerUnreachable(watch.reason))
            elif first is not None:
                msg = await first
                first = None
            else:
                msg = await stream.read()
            if watch is not None:
                watch.heard()
            if timer is not None:
                timer.cancel()
                timer = None
            if msg is grpc.aio.EOF:
                break
            kind = msg.WhichOneof("body")
            if kind == "finished":
                f = msg.finished
                verdict = commit.finished(success=f.success, error_code=f.errorCode,
                                          answered=committed)
                if verdict is Verdict.NACK:
                    return Attempt(False, ServerTooBusy(
                        f.errorStr or "Timed out - server too busy"))
                if verdict is Verdict.DOES_NOT_FIT:
                    return answers.does_not_fit(f)
                finished = f
                committed = True
                continue
            if acks and not committed:
                # The ack (or, from a runner that skips it, any result): the
                # commit point. Now the go: the body.
                sender = await _start_sending(_send_body(stream, call), call)
            committed = True
            if kind == "result_start":
                call.timings.responded()
                http = msg.result_start.http
                if is_streaming(sink):
                    cast(StreamingSink, sink).runner = answers.address
                sink.start(http.status_code or 200,
                           [(h.key, h.value) for h in http.headers])
                if detached:
                    # fn: a detached call is answered once a runner accepted it.
                    # Read the rest in the background, for its timings and
                    # errors. The runner owns the call now (runner.proto,
                    # DETACHED CALLS); for one that would still cancel it with
                    # the stream, the pool keeps a removed runner's channel
                    # open until the call's timeout.
                    keep(asyncio.create_task(_drain_detached(stream, call, answers),
                                             name=DETACHED_DRAIN))
                    return Attempt(True, None)
            elif kind == "data":
                received += len(msg.data.data)
                if received > limit:
                    # The runner ignored the limit it was told: stop reading (the
                    # finally cancels the stream), the client gets a clear error.
                    return Attempt(True, too_large(answers.address, received, limit))
                sink.write(msg.data.data)
    except grpc.aio.AioRpcError as e:
        return answers.rpc_failed(e, call, committed=committed, acks=acks,
                                  sent=acks or not sent.try_refused)
    finally:
        if first is not None and not first.done():
            first.cancel()
        if timer is not None:
            timer.cancel()
        if not stream.done() and not (detached and committed):
            if sender is not None:
                sender.cancel()
            stream.cancel()
        elif sender is not None and not sender.done():
            # A detached call goes on without us: let the body finish sending.
            keep(sender)
    if acks and not committed:
        # Ended with OK before the ack: never started (no go was sent).
        return Attempt(False, RunnerUnreachable(
            f"runner {answers.address} ended the stream without answering the try"))
    if finished is None:
        return Attempt(True, RunnerError(
            f"runner {answers.address} ended the call without a finished message",
            runner=answers.address, error_code=502))
    attempt = answers.finished(finished, call)
    if attempt.error is None and detached and not getattr(sink, "started", True):
        sink.start(202, [])
    return attempt


async def _drain_detached(stream: Any, call: RunnerCall, answers: Answers) -> None:
    try:
        async with asyncio.timeout(call.model.timeout + 30):
            while True:
                msg = await stream.read()
                if msg is grpc.aio.EOF:
                    return
                if msg.WhichOneof("body") == "finished":
                    answers.record_finish(msg.finished, call, in_flight=False)
                    if not msg.finished.success:
                        log.warning("detached call failed on runner",
                                    extra=kv(call_id=call.model.id, runner=answers.address,
                                             error=msg.finished.errorStr))
    except (grpc.aio.AioRpcError, TimeoutError) as e:
        log.warning("lost track of detached call",
                    extra=kv(call_id=call.model.id, runner=answers.address, error=repr(e)))
    finally:
        if not stream.done():
            stream.cancel()
