"""GrpcRunner: the ``Runner`` backed by a ``fnlb.v1.Runner`` stub, and its factories.

The commit rule (protos/fnlb/v1/runner.proto) is applied in ``try_exec``,
over Runner/Calls (small sync calls, shared stream), Runner/Call (sync calls
up to 1 MiB) or TryExec (everything, and fn's runners): only a NACK, a "does
not fit", a failure that proves the runner never got the call, or (runners
that list "ack") anything before the runner's acknowledgement, returns
``placed=False``. Everything else is committed and never re-sent. A try the
runner does not answer within ``accept_timeout`` is cancelled ("ack" runners)
or reported to ``on_unanswered`` (others). The decisions are the pure
functions of ``fnlb.transport.commit``; ``_answers`` turns them into attempts,
``_tryexec`` is the TryExec stream, ``_channel`` keeps the channel, and this
module picks the path for each call and follows what the runner serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from fnlb import tracing
from fnlb.errors import RunnerError, RunnerUnreachable
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.runnerpool import DETACHED, Attempt, MTLSRunnerFactory, RunnerCall, RunnerStatus
from fnlb.transport import commit
from fnlb.transport._accept import AcceptWatch
from fnlb.transport._answers import Answers, ProtocolMismatch
from fnlb.transport._channel import RunnerChannel
from fnlb.transport._response import DEFAULT_MAX_RESPONSE_BYTES, is_streaming
from fnlb.transport._tryexec import DETACHED_DRAIN, try_call, try_exec_stream
from fnlb.transport.callstream import (
    STREAM_MAX_BODY,
    AcceptTimeout,
    CallStreamFailed,
)
from fnlb.transport.commit import Verdict
from fnlb.transport.fn_runner import AUTO, FN, FNLB, FnRunnerStub, protocol_of, status_from_fn
from fnlb.v1 import runner_pb2, runner_pb2_grpc

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

__all__ = [
    "GrpcRunner",
    "UNARY_MAX_BODY",
    "STREAM_MAX_BODY",
    "make_runner_factory",
    "status_from_pb",
]

log = logging.getLogger(__name__)

# Sync calls with a request body up to this size go over the unary Runner/Call
# (one message each way: about half the LB's CPU per call of a TryExec stream,
# make bench) to runners that serve it; bigger bodies and detached calls use
# TryExec, which streams them.
UNARY_MAX_BODY = 1024 * 1024



def status_from_pb(s: runner_pb2.RunnerStatus) -> RunnerStatus:
    return RunnerStatus(
        active=s.active, requests_received=s.requestsReceived,
        requests_handled=s.requestsHandled, failed=s.failed, error_code=s.errorCode,
        error_str=s.errorStr, is_network_disabled=s.isNetworkDisabled, draining=s.draining,
        drained=s.drained, slots_total=s.slots_total, slots_free=s.slots_free,
        memory_mb_total=s.memory_mb_total, memory_mb_free=s.memory_mb_free,
        warm_slots=tuple(s.warm_slots), runner_id=s.runner_id, custom=dict(s.customStatus),
        features=frozenset(s.features), watch_heartbeat_ms=s.watch_heartbeat_ms)


class GrpcRunner(RunnerChannel):
    """One runner, one long-lived channel; ``try_exec`` is one call on the Calls stream,
    one Call or one TryExec stream."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None, *,
                 metrics: Metrics | None = None, connect_timeout: float = 1.0,
                 server_name: str | None = None, unary: bool = True,
                 calls: bool = True, tls_source: ClientTLS | None = None,
                 ack: bool = True, accept_timeout: float | None = 1.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 protocol: str = FNLB) -> None:
        """``address``: ``HOST:PORT``, or ``fn://HOST:PORT`` / ``fnlb://HOST:PORT``
        to name the runner's protocol (fnlb.transport.fn_runner); ``protocol``:
        the protocol of addresses without one ("auto": learn it from Status;
        the LB's factory defaults to it).
        ``tls_source`` (instead of ``credentials``): when its certificate
        files change, ``refresh`` re-dials the runner with them.
        ``max_response_bytes``: the most response body a call may bring back
        (``--max-response-bytes``); the runner is told it with every call.

        ``accept_timeout``: seconds a try may go unanswered (None: no limit);
        ``ack`` False: never ask for acknowledgements, even if the runner lists "ack".
        """
        self._address = address
        scheme, sep, rest = address.partition("://")
        self._target = rest if sep else address
        self._protocol_setting = protocol_of(scheme if sep else None, protocol)
        # The protocol the runner speaks; None until learned ("auto" only).
        self._protocol: str | None = (
            None if self._protocol_setting == AUTO else self._protocol_setting)
        self._learning: asyncio.Future[None] | None = None
        self._busy = 0
        self._asking = 0
        self._checking = False  # a Status asks whether a silent runner is stuck
        self._used_at = time.monotonic()
        self._max_response_bytes = max_response_bytes
        self._server_name = server_name
        self._keepalive = False  # the runner listed "keepalive" (its server allows the pings)
        # Dialled with KEEPALIVE_OPTIONS until a Status shows the runner does not
        # allow them (follow_keepalive): one dial, not two, for runners that do.
        self._pinging = self._protocol_setting != FN
        self._tls_source = tls_source
        if tls_source is not None:
            self._tls_generation = tls_source.generation
            credentials = tls_source.credentials()
        self._retiring: list[grpc.aio.Channel] = []
        self.on_unanswered: Callable[[str], None] | None = None
        """Called with a reason when a try to a runner without "ack" goes
        unanswered past ``accept_timeout`` (and nothing else was heard from the
        runner since it was sent). The call goes on; the pool may stop placing
        here until a probe answers. Set by the pool."""
        self._watch = AcceptWatch(address, accept_timeout, self._unanswered)
        self._dial(credentials)
        self._answers = Answers(address, metrics if metrics is not None else Metrics(),
                                max_response_bytes)
        self._connect_timeout = connect_timeout
        self._closed = False
        # Runner/Calls and Runner/Call are tried until the runner shows it has
        # them not: it answers UNIMPLEMENTED, or its Status lists features
        # without them (fn's runners list none). ``unary``/``calls`` False:
        # never use them.
        self._unary = self._allow_unary = unary
        self._calls = self._allow_calls = calls
        # Acknowledgements are asked for only once a Status listed "ack".
        self._allow_ack = ack
        self._acks = False
        self._background: set[asyncio.Task[None]] = set()
        self._last_explained = -1e9
        self.tls = credentials is not None

    def __repr__(self) -> str:
        return f"GrpcRunner({self._address!r})"

    @property
    def address(self) -> str:
        return self._address

    @property
    def protocol(self) -> str:
        """"fnlb" or "fn" (fn's RunnerProtocol); "" while not yet learned."""
        return self._protocol or ""

    def _reconnected(self) -> None:
        # "auto": a re-dialled runner may be another program now; learn again.
        if self._protocol_setting == AUTO:
            self._protocol = None

    @property
    def unary(self) -> bool:
        """False once the runner is known not to serve Runner/Call."""
        return self._unary

    @property
    def calls(self) -> bool:
        """False once the runner is known not to serve Runner/Calls."""
        return self._calls

    @property
    def acks(self) -> bool:
        """True once the runner's Status listed "ack": tries ask for an acknowledgement."""
        return self._acks

    @property
    def keepalive(self) -> bool:
        """True while the channel pings every second (the runner listed "keepalive")."""
        return self._keepalive

    def _unanswered(self, reason: str) -> None:
        """A try of a runner without "ack" went unanswered past the accept deadline.

        fn's runners send nothing until the function's response starts, so
        silence alone is no proof: one Status on the same channel, as long as
        the deadline, tells a stuck runner (no answer: the pool hears of it)
        from a slow function (an answer: nothing to report).
        """
        if self._checking or self._closed:
            return
        self._checking = True
        self._keep(asyncio.create_task(self._check_unanswered(reason)))

    async def _check_unanswered(self, reason: str) -> None:
        try:
            await self._ask_status(self._watch.timeout or 1.0)  # an answer: heard
        except (grpc.aio.AioRpcError, TimeoutError) as e:
            log.debug("runner did not answer a try in time, nor a status", extra=kv(
                runner=self._address, accept_timeout=self._watch.timeout, error=repr(e)))
            listener = self.on_unanswered
            if listener is not None:
                listener(reason)
        finally:
            self._checking = False

    async def try_exec(self, call: RunnerCall) -> Attempt:
        self._unpark()
        self._busy += 1
        self._used_at = time.monotonic()
        try:
            return await self._try_exec(call)
        finally:
            self._busy -= 1
            self._used_at = time.monotonic()

    async def _try_exec(self, call: RunnerCall) -> Attempt:
        if self._closed:
            return Attempt(False, RunnerUnreachable(f"runner {self._address} is closed"))
        if not await self._connected():
            state = self._channel.get_state().name
            self._explain_unreachable()
            return Attempt(False, RunnerUnreachable(
                f"runner {self._address} unreachable (channel {state})"))
        if self._protocol is None:
            try:
                await self._learn_protocol()
            except grpc.aio.AioRpcError as e:
                return Attempt(False, RunnerUnreachable(
                    f"runner {self._address}: no runner protocol answered Status: "
                    f"{e.code().name}: {e.details()}"))
        if self._protocol == FN:
            return await self._engage(call)
        acks = self._acks
        # A streaming sink (InvokeStream) gets the response as TryExec frames
        # whatever its size; Call and Calls carry it in one message.
        if call.model.type != DETACHED and not is_streaming(call.response):
            n = len(call.request_body())
            if self._calls and n <= STREAM_MAX_BODY:
                attempt = await self._via_call_stream(call, acks)
                if attempt is not None:
                    return attempt
            # Call has no acknowledgement: with "ack" runners bigger bodies go
            # over TryExec, where a call never acknowledged can go elsewhere.
            if self._unary and not acks and n <= UNARY_MAX_BODY:
                attempt = await self._call(call)
                if attempt is not None:
                    return attempt
            # UNIMPLEMENTED: the runner never ran it; same attempt, over TryExec.
        attempt = await try_exec_stream(self._stub, call, self._answers, self._keep,
                                        acks=acks, watch=self._watch)
        self._unsupported(attempt)
        return attempt

    async def _engage(self, call: RunnerCall) -> Attempt:
        """fn's RunnerProtocol: every call on one Engage stream (no fast paths, no ack)."""
        attempt = await try_exec_stream(self._fn_stub, call, self._answers, self._keep,
                                        watch=self._watch)
        self._unsupported(attempt)
        return attempt

    def _unsupported(self, attempt: Attempt) -> None:
        # A runner that answers UNIMPLEMENTED to the protocol learned (not
        # placed, Answers.failed) was replaced by one speaking the other: the
        # next call learns again.
        if self._protocol_setting == AUTO and isinstance(attempt.error, ProtocolMismatch):
            self._protocol = None

    async def _learn_protocol(self) -> None:
        """Learn the protocol with one Status (shared by the calls that wait for it)."""
        if self._learning is None:
            self._learning = asyncio.ensure_future(self._learn_once())
        learning = self._learning
        try:
            await asyncio.shield(learning)
        finally:
            if learning.done() and self._learning is learning:
                self._learning = None

    async def _learn_once(self) -> None:
        # Only the protocol: the fast paths are the prober's to negotiate.
        protocol, _ = await self._ask_status(2.0)
        self._watch.heard()
        self._set_protocol(protocol)

    def _set_protocol(self, protocol: str) -> None:
        if protocol != self._protocol:
            log.info("runner protocol", extra=kv(runner=self._address, protocol=protocol,
                                                  setting=self._protocol_setting))
        self._protocol = protocol

    @staticmethod
    def _convert(protocol: str, s: runner_pb2.RunnerStatus) -> RunnerStatus:
        return status_from_fn(s) if protocol == FN else status_from_pb(s)

    async def _ask_status(self, timeout: float) -> tuple[str, runner_pb2.RunnerStatus]:
        """(protocol, Status reply): the protocol known (or fnlb.v1's) first; with
        "auto", on UNIMPLEMENTED the other one. Changes nothing but when the runner
        was last heard from (any answer shows it alive)."""
        if self._protocol_setting != AUTO:
            order = [self._protocol_setting]
        else:
            order = [FN, FNLB] if self._protocol == FN else [FNLB, FN]
        # An idle-closed channel stays closed: a one-off channel for this poll.
        once = self._new_channel(self._credentials) if self._parked else None
        self._asking += 1  # a Status in flight: the channel is not idle-closed under it
        try:
            for i, protocol in enumerate(order):
                if once is not None:
                    stub: Any = (FnRunnerStub(once) if protocol == FN
                                 else runner_pb2_grpc.RunnerStub(once))
                else:
                    stub = self._fn_stub if protocol == FN else self._stub
                try:
                    s: runner_pb2.RunnerStatus = await stub.Status(empty_pb2.Empty(),
                                                                   timeout=timeout)
                    self._watch.heard()  # any answer shows the runner alive
                    return protocol, s
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED or i == len(order) - 1:
                        raise
            raise AssertionError("unreachable")
        finally:
            self._asking -= 1
            if once is not None:
                await once.close(grace=None)

    def _call_request(self, call: RunnerCall, ack: bool = False) -> runner_pb2.CallRequest:
        # `try` is a Python keyword, hence the dict (the stubs cannot type it).
        tc = try_call(call, self._max_response_bytes, ack=ack)
        return runner_pb2.CallRequest(**{"try": tc},  # type: ignore[arg-type]
                                      body=call.request_body())

    async def _via_call_stream(self, call: RunnerCall, acks: bool) -> Attempt | None:
        """One call on the Calls stream; None when the runner does not serve it (never ran it)."""
        try:
            reply = await self._call_stream.call(self._call_request(call, acks))
        except CallStreamFailed as e:
            code, details = (None, None) if e.error is None else (e.error.code(), e.error.details())
            verdict = commit.stream_failed(code, details, not_run=e.not_run, unacked=e.unacked)
            if verdict is Verdict.UNSUPPORTED:
                self._calls = False
                log.info("runner does not serve Calls; using Call",
                         extra=kv(runner=self._address, error=e.error and e.error.details()))
                return None
            if verdict is Verdict.NEVER_REACHED:
                return Attempt(False, RunnerUnreachable(f"runner {self._address}: {e}"))
            if verdict is Verdict.UNACKED:
                why = str(e) if isinstance(e, AcceptTimeout) else (
                    f"runner {self._address}: {e} (before it acknowledged the call)")
                return Attempt(False, RunnerUnreachable(why))
            if code is not None:
                return self._answers.failed(verdict, code, details, call)
            # Verdict.LOST: the LB closed the stream under a call it had sent.
            return Attempt(True, RunnerError(f"runner {self._address}: {e}",
                                             runner=self._address, error_code=502, lost=True))
        return self._answers.replied(reply, call)

    async def _call(self, call: RunnerCall) -> Attempt | None:
        """One Runner/Call; None when the runner does not serve Call (it never ran the call).

        The commit rule as in ``try_exec_stream``: only a NACK reply (finished 503, no
        http), a "too busy" status or a failure that proves the runner never got
        the request is "not placed"; anything else is committed.
        """
        timer = self._watch.watch(time.monotonic())
        try:
            reply: runner_pb2.CallReply = await self._stub.Call(
                self._call_request(call), metadata=tracing.metadata() if tracing.enabled else None)
            self._watch.heard()
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details()
            verdict = commit.call_failed(code, details)
            if verdict is Verdict.UNSUPPORTED:
                self._unary = False
                log.info("runner does not serve Call; using TryExec",
                         extra=kv(runner=self._address, error=details))
                return None
            return self._answers.failed(verdict, code, details, call)
        finally:
            if timer is not None:
                timer.cancel()
        return self._answers.replied(reply, call)

    async def status(self, timeout: float = 2.0) -> RunnerStatus:
        """The runner's Status RPC, and nothing else: no re-dial, no renegotiation.

        fnlb.v1.Runner/Status or fn's /RunnerProtocol/Status, as the runner speaks
        (with "auto" and no protocol learned yet: fnlb's, then fn's). A runner
        whose channel was closed for being idle is asked over a channel made
        for this one call: a poll does not reopen it.
        """
        protocol, s = await self._ask_status(timeout)
        return self._convert(protocol, s)

    @property
    def on_free(self) -> Callable[[int, int], None] | None:
        """Called with (slots_free, memory_mb_free) when a finished piggybacks them
        (runner.proto, THE PIGGYBACK). Set by the pool."""
        return self._answers.on_free

    @on_free.setter
    def on_free(self, listener: Callable[[int, int], None] | None) -> None:
        self._answers.on_free = listener

    async def watch(self, heartbeat: float = 0.0) -> AsyncGenerator[RunnerStatus, None]:
        """Runner/Watch: the runner's status as it pushes it (runner.proto, THE WATCH).

        Ends when the runner ends the stream; raises AioRpcError when it breaks.
        ``heartbeat``: ask for a message at least this often (0: the runner's own).
        Closing the iterator (or cancelling its reader) cancels the stream.
        """
        stream = self._stub.Watch(runner_pb2.WatchRequest(heartbeat_ms=round(heartbeat * 1000)))
        try:
            while True:
                msg = await stream.read()
                if msg is grpc.aio.EOF:
                    return
                self._watch.heard()
                if self._protocol is None:
                    self._set_protocol(FNLB)  # only fnlb.v1.Runner serves Watch
                yield status_from_pb(msg)
        finally:
            stream.cancel()

    def negotiate(self, status: RunnerStatus) -> None:
        """Use the fast paths ``status.features`` lists, and only those.

        A runner restarted with another version on the same address is
        followed at the next poll. Paths turned off at construction stay off.
        """
        self._unary = self._allow_unary and "call" in status.features
        self._calls = self._allow_calls and "calls" in status.features
        self._acks = self._allow_ack and "ack" in status.features

    async def refresh(self, timeout: float = 2.0) -> RunnerStatus:
        """The prober's step: ``follow_tls``, then ``status``, then ``negotiate`` and
        ``follow_keepalive`` with it.

        Runs every poll (backed off by the prober for runners that do not
        answer); the Status RPC goes over the new channel after a re-dial.
        """
        self.follow_tls()
        self.redial_if_failing()
        try:
            protocol, s = await self._ask_status(timeout)
        except grpc.aio.AioRpcError as e:
            # The prober only says "unreachable": say why when TLS is the reason
            # (e.g. our certificate expired), at most every 10 s.
            cause = self._tls_cause(e)
            now = time.monotonic()
            if cause and now - self._last_explained >= 10.0:
                self._last_explained = now
                log.warning("runner unreachable", extra=kv(
                    runner=self._address, code=e.code().name, cause=e.details(),
                    tls_cause=cause))
            raise
        status = self._convert(protocol, s)
        self.negotiate(status)
        self.follow_keepalive(status)
        # Every poll checks the protocol too: a runner restarted as the other
        # kind is followed ("auto"). After follow_keepalive: a re-dial of our
        # own making forgets the protocol, but this answer came from the runner.
        self._set_protocol(protocol)
        return status

    async def drain(self, wait: bool = False, timeout: float = 5.0) -> runner_pb2.CloseResponse:
        """Ask the runner itself to drain (its Close RPC).

        fn's runners have no Close: for them (or a runner without Close) the
        drain is the LB's alone, which stops placing there, and this is a no-op.
        """
        if self._protocol == FN:
            return runner_pb2.CloseResponse()
        self._unpark()
        try:
            resp: runner_pb2.CloseResponse = await self._stub.Close(
                runner_pb2.CloseRequest(wait=wait), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return runner_pb2.CloseResponse()
        return resp

    async def close(self) -> None:
        """Close the LB's channel to the runner (fn's Runner.Close).

        Detached calls the runner accepted run on there: the LB only stops
        reading their results (runner.proto, DETACHED CALLS).
        """
        if not self._closed:
            self._closed = True
            detached = sum(t.get_name() == DETACHED_DRAIN for t in self._background)
            if detached:
                log.info("leaving detached calls to the runner",
                         extra=kv(runner=self._address, calls=detached))
            for task in list(self._background):
                task.cancel()
            await self._call_stream.close()
            for channel in [self._channel, *self._retiring]:
                await channel.close(grace=None)  # a second close (parked) does nothing


def make_runner_factory(metrics: Metrics, connect_timeout: float = 1.0,
                        server_name: str | None = None,
                        accept_timeout: float | None = 1.0,
                        ack: bool = True,
                        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                        protocol: str = AUTO) -> MTLSRunnerFactory:
    """fn's MTLSRunnerFactory: mTLS when given the LB's ClientTLS, plaintext otherwise.

    ``accept_timeout`` and ``ack``: as ``GrpcRunner``'s. ``protocol``
    (``--runner-protocol``): "auto", "fnlb" or "fn", for addresses without
    ``fn://`` or ``fnlb://``; either kind of runner gets the same channel and TLS.
    """

    def factory(address: str, tls: ClientTLS | None) -> GrpcRunner:
        return GrpcRunner(address, metrics=metrics, connect_timeout=connect_timeout,
                          server_name=server_name, tls_source=tls,
                          accept_timeout=accept_timeout, ack=ack,
                          max_response_bytes=max_response_bytes, protocol=protocol)

    return factory


