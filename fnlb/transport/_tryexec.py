"""The LB's side of Runner/TryExec (the fn protocol): one stream per call, the
body in frames, for every call the Calls stream and Call cannot take.

    attempt = await try_exec_stream(stub, call, answers, keep)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import grpc

from fnlb.errors import RunnerError, ServerTooBusy
from fnlb.logs import kv
from fnlb.runnerpool import DETACHED, Attempt, RunnerCall
from fnlb.transport import commit
from fnlb.transport._answers import Answers
from fnlb.transport._response import MAX_RESPONSE_BYTES_KEY, StreamingSink, is_streaming, too_large
from fnlb.v1 import runner_pb2

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


def try_call(call: RunnerCall, max_response_bytes: int) -> runner_pb2.TryCall:
    """The ``try`` that opens a TryExec stream; Call and Calls requests carry it too.

    Its extensions tell the runner the LB's response size limit.
    """
    tc = runner_pb2.TryCall(models_call_json=call.model_json,
                            slot_hash_id=call.slot_hash_id, extensions=call.extensions)
    tc.extensions[MAX_RESPONSE_BYTES_KEY] = str(max_response_bytes)
    return tc


async def _send(stream: Any, call: RunnerCall, max_response_bytes: int) -> None:
    """Write ``try``, the body frames (last with eof) and half-close."""
    # `try` is a Python keyword, hence the dict (the stubs cannot type it).
    tc = try_call(call, max_response_bytes)
    await stream.write(runner_pb2.ClientMsg(**{"try": tc}))  # type: ignore[arg-type]
    body = call.request_body()
    n = len(body)
    if n <= CHUNK_SIZE:
        # The common case: the body as it is, no slicing copy.
        await stream.write(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(data=body, eof=True)))
    else:
        view = memoryview(body)
        for off in range(0, n, CHUNK_SIZE):
            end = off + CHUNK_SIZE
            await stream.write(runner_pb2.ClientMsg(data=runner_pb2.DataFrame(
                data=bytes(view[off:end]), eof=end >= n)))
    await stream.done_writing()


async def _send_quietly(stream: Any, call: RunnerCall, max_response_bytes: int) -> None:
    try:
        await _send(stream, call, max_response_bytes)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # The stream ended while we were sending (NACK, runner gone): the
        # reader sees why.
        pass


async def try_exec_stream(stub: Any, call: RunnerCall, answers: Answers,
                          keep: Callable[[asyncio.Task[None]], None]) -> Attempt:
    """One TryExec stream (the fn protocol): every call a Call cannot take."""
    # Reader/writer style, not a request iterator: for one the iterator
    # grpc.aio runs an extra task per stream (measured: ~5% of LB CPU).
    stream = stub.TryExec()
    committed = False
    finished: runner_pb2.CallFinished | None = None
    sink = call.response
    detached = call.model.type == DETACHED
    sender: asyncio.Task[None] | None = None
    limit = answers.max_response_bytes
    received = 0
    try:
        if len(call.request_body()) <= CHUNK_SIZE:
            # Two small messages always fit the HTTP/2 window: write them
            # before reading, in this task.
            await _send_quietly(stream, call, limit)
        else:
            # A big body is written while the answer is read, as fn does:
            # a runner may stream its answer before it has read all input.
            sender = asyncio.create_task(_send_quietly(stream, call, limit))
        while True:
            msg = await stream.read()
            if msg is grpc.aio.EOF:
                break
            kind = msg.WhichOneof("body")
            if kind == "finished":
                f = msg.finished
                if commit.is_nack(success=f.success, error_code=f.errorCode,
                                  answered=committed):
                    return Attempt(False, ServerTooBusy(
                        f.errorStr or "Timed out - server too busy"))
                finished = f
                committed = True
                continue
            committed = True
            if kind == "result_start":
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
        return answers.rpc_failed(e, call, committed=committed)
    finally:
        if not stream.done() and not (detached and committed):
            if sender is not None:
                sender.cancel()
            stream.cancel()
        elif sender is not None and not sender.done():
            # A detached call goes on without us: let the body finish sending.
            keep(sender)
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
                    answers.record_finish(msg.finished, call)
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
