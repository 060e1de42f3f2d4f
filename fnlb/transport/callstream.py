"""The LB's side of Runner/Calls: many small sync calls over one stream per runner.

    stream = CallStream(stub)          # one per GrpcRunner; opened on first use
    reply = await stream.call(request) # a runner_pb2.CallReply, or CallStreamFailed

Calls waiting to be written are sent together as one CallBatch; the runner
answers with ReplyBatches. Under load one message carries many calls, so per
call the LB does a fraction of the gRPC work of a unary Call (``make bench``).
Per call the commit rule is Runner/Call's (protos/fnlb/v1/runner.proto, THE
CALL STREAM); ``CallStreamFailed`` says how a stream that ended without a
call's reply maps onto it. A call whose try asks for an acknowledgement (the
runner lists "ack") is committed once the LB reads its seq in
``ReplyBatch.acks``; the LB then sends its go (``CallBatch.go``). Before that it
is not placed: a stream failure, or no ack within the accept deadline
(``AcceptTimeout``), fails it with ``unacked`` set.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import grpc

from fnlb.transport._accept import AcceptWatch
from fnlb.v1 import runner_pb2, runner_pb2_grpc

__all__ = ["AcceptTimeout", "CallStream", "CallStreamFailed", "STREAM_MAX_BODY"]

log = logging.getLogger(__name__)

# Only small bodies share the stream: a big one would hold up every small call
# queued behind it. Bigger sync bodies use Runner/Call or TryExec.
STREAM_MAX_BODY = 64 * 1024
# Bodies per CallBatch, at most (one call's body may exceed it on its own).
_BATCH_BYTES = 1024 * 1024


class CallStreamFailed(Exception):
    """The stream ended before this call's reply.

    ``not_run``: the runner certainly did not run the call: it was never
    written, or the runner ended the stream with OK (it answers every call it
    read before it does), or answered UNIMPLEMENTED (``unsupported``: it has
    no Calls). Otherwise the call may have run. ``error``: the stream's gRPC
    error; None when it ended with OK or the LB closed it. ``unacked``: the
    call asked for an acknowledgement and the LB had not read it (no go sent:
    the runner cannot have started it).
    """

    def __init__(self, error: grpc.aio.AioRpcError | None, *, not_run: bool,
                 why: str = "", unacked: bool = False) -> None:
        self.error = error
        self.unsupported = error is not None and error.code() == grpc.StatusCode.UNIMPLEMENTED
        self.not_run = not_run or self.unsupported
        self.unacked = unacked
        if error is not None:
            why = f"{error.code().name}: {error.details()}"
        super().__init__(self._message(why))

    @staticmethod
    def _message(why: str) -> str:
        return f"call stream ended: {why}"


class AcceptTimeout(CallStreamFailed):
    """No answer to a call that asked for an acknowledgement within the accept deadline.

    The LB cancelled it (``CallBatch.cancel``) and sent no go: not placed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(None, not_run=False, why=reason, unacked=True)

    @staticmethod
    def _message(why: str) -> str:
        return why


class _Pending:
    __slots__ = ("request", "future", "sent", "acks", "acked", "timer")

    def __init__(self, request: runner_pb2.CallRequest, future: asyncio.Future[Any]) -> None:
        self.request = request
        self.future = future
        self.sent = False
        # `try` is a Python keyword, hence getattr.
        self.acks: bool = getattr(request, "try").ack
        self.acked = False
        self.timer: asyncio.TimerHandle | None = None

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Open:
    """One open Runner/Calls RPC with its writer and reader tasks."""

    __slots__ = ("rpc", "queue", "cancels", "gos", "pending", "wake", "tasks")

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc
        self.queue: collections.deque[_Pending] = collections.deque()
        self.cancels: list[int] = []
        self.gos: list[int] = []
        self.pending: dict[int, _Pending] = {}
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []


class CallStream:
    """Runner/Calls to one runner: opened on first use, reopened after it ends.

    ``watch``: the runner's accept deadline (``_accept.AcceptWatch``); None: none.
    """

    def __init__(self, stub: runner_pb2_grpc.RunnerStub, watch: AcceptWatch | None = None) -> None:
        self._stub = stub
        self._watch = watch
        self._open: _Open | None = None
        self._seq = 0
        self._closed = False
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def inflight(self) -> int:
        return len(self._open.pending) if self._open is not None else 0

    async def wait_idle(self) -> None:
        """Return once no call waits for a reply (at once if none does)."""
        if self.inflight:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _maybe_idle(self, s: _Open) -> None:
        if self._idle_waiters and not s.pending:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    async def call(self, request: runner_pb2.CallRequest) -> runner_pb2.CallReply:
        """Send one call and wait for its reply; cancelling the wait cancels the call."""
        if self._closed:
            raise CallStreamFailed(None, not_run=True, why="closed by the LB")
        s = self._open
        if s is None:
            s = self._open = self._start()
        self._seq += 1
        seq = request.seq = self._seq
        p = _Pending(request, asyncio.get_running_loop().create_future())
        s.pending[seq] = p
        s.queue.append(p)
        s.wake.set()
        watch = self._watch
        if watch is not None and watch.timeout is not None:
            if p.acks:
                p.timer = asyncio.get_running_loop().call_later(
                    watch.timeout, self._unacked, s, p)
            else:
                p.timer = watch.watch(time.monotonic())
        try:
            reply: runner_pb2.CallReply = await p.future
            return reply
        except asyncio.CancelledError:
            self._give_up(s, p)
            raise
        finally:
            p.stop_timer()

    def _give_up(self, s: _Open, p: _Pending) -> None:
        """The LB no longer waits for ``p``: tell the runner to drop it (if it has it)."""
        seq = p.request.seq
        if s.pending.pop(seq, None) is not None and p.sent:
            # The runner has it: tell it to stop. Unsent, the writer skips it.
            s.cancels.append(seq)
            s.wake.set()
        self._maybe_idle(s)

    def _unacked(self, s: _Open, p: _Pending) -> None:
        """The accept deadline of a call that asked for an ack passed without one."""
        p.timer = None
        if p.acked or p.future.done():
            return
        assert self._watch is not None
        self._give_up(s, p)
        p.future.set_exception(AcceptTimeout(self._watch.reason))

    def _start(self) -> _Open:
        s = _Open(self._stub.Calls())
        s.tasks = [asyncio.create_task(self._write(s), name="fnlb-calls-write"),
                   asyncio.create_task(self._read(s), name="fnlb-calls-read")]
        return s

    async def _write(self, s: _Open) -> None:
        try:
            while True:
                await s.wake.wait()
                s.wake.clear()
                while s.queue or s.cancels or s.gos:
                    calls, size = [], 0
                    while s.queue and size < _BATCH_BYTES:
                        p = s.queue.popleft()
                        if p.future.done():
                            continue  # cancelled before it was sent
                        p.sent = True
                        calls.append(p.request)
                        size += len(p.request.body)
                    cancels, s.cancels = s.cancels, []
                    # A go only for calls still waited for (not given up since).
                    gos = [seq for seq in s.gos if seq in s.pending]
                    s.gos = []
                    if calls or cancels or gos:
                        await s.rpc.write(runner_pb2.CallBatch(calls=calls, cancel=cancels,
                                                               go=gos))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            # The stream is over; the reader sees why and fails what is pending.
            s.rpc.cancel()
        except Exception:
            # A bug must not leave calls waiting for replies that cannot come:
            # end the stream, and the reader fails every pending call.
            log.exception("call stream writer failed; ending the stream")
            s.rpc.cancel()

    async def _read(self, s: _Open) -> None:
        error: grpc.aio.AioRpcError | None = None
        by_runner = False
        why = ""
        try:
            while True:
                msg = await s.rpc.read()
                if msg is grpc.aio.EOF:
                    # EOF also follows our own cancel: only status OK is the
                    # runner saying it answered every call it read.
                    code = await s.rpc.code()
                    by_runner = code == grpc.StatusCode.OK
                    why = ("the runner ended it (OK)" if by_runner
                           else f"{code.name}: {await s.rpc.details()}")
                    break
                if self._watch is not None:
                    self._watch.heard()
                for seq in msg.acks:
                    p = s.pending.get(seq)
                    if p is not None and p.acks and not p.acked:
                        # The commit point: from now on the call is the runner's.
                        p.acked = True
                        p.stop_timer()
                        s.gos.append(seq)
                        s.wake.set()
                for reply in msg.replies:
                    p = s.pending.pop(reply.seq, None)
                    if p is not None and not p.future.done():
                        p.future.set_result(reply)
                self._maybe_idle(s)
        except grpc.aio.AioRpcError as e:
            error = e
        except asyncio.CancelledError:
            why = "cancelled (the LB closed the stream, or its writer failed)"
            raise
        finally:
            self._ended(s, error, by_runner=by_runner, why=why)

    def _ended(self, s: _Open, error: grpc.aio.AioRpcError | None, *,
               by_runner: bool = False, why: str = "") -> None:
        if self._open is s:
            self._open = None  # the next call opens a new stream
        for task in s.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not s.rpc.done():
            s.rpc.cancel()
        for p in s.pending.values():
            if not p.future.done():
                p.future.set_exception(CallStreamFailed(
                    error, not_run=by_runner or not p.sent, why=why,
                    unacked=p.acks and not p.acked))
        s.pending.clear()
        s.queue.clear()
        self._maybe_idle(s)

    async def close(self) -> None:
        """End the stream; calls still waiting fail as if it broke."""
        self._closed = True
        s, self._open = self._open, None
        if s is not None:
            self._ended(s, None, why="closed by the LB")
            await asyncio.gather(*s.tasks, return_exceptions=True)
