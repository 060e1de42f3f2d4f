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
``_tryexec`` is the TryExec stream, and this module keeps the channel, picks the
path for each call and follows what the runner serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from fnlb.errors import RunnerError, RunnerUnreachable
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.runnerpool import DETACHED, Attempt, MTLSRunnerFactory, RunnerCall, RunnerStatus
from fnlb.transport import commit
from fnlb.transport._accept import AcceptWatch
from fnlb.transport._answers import Answers
from fnlb.transport._response import DEFAULT_MAX_RESPONSE_BYTES, is_streaming
from fnlb.transport._tryexec import DETACHED_DRAIN, try_call, try_exec_stream
from fnlb.transport.callstream import (
    STREAM_MAX_BODY,
    AcceptTimeout,
    CallStream,
    CallStreamFailed,
)
from fnlb.transport.commit import Verdict
from fnlb.v1 import runner_pb2, runner_pb2_grpc

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

__all__ = [
    "GrpcRunner",
    "UNARY_MAX_BODY",
    "STREAM_MAX_BODY",
    "CHANNEL_OPTIONS",
    "KEEPALIVE_OPTIONS",
    "make_runner_factory",
    "status_from_pb",
]

log = logging.getLogger(__name__)

# Sync calls with a request body up to this size go over the unary Runner/Call
# (one message each way: about half the LB's CPU per call of a TryExec stream,
# make bench) to runners that serve it; bigger bodies and detached calls use
# TryExec, which streams them.
UNARY_MAX_BODY = 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A restarted runner should be reachable again soon, not after gRPC's
    # default back-off of up to two minutes. The back-off starts at 100 ms and
    # grows 1.6x per attempt: a runner down for less than ~4 s is redialled
    # within 2 s, a long-dead one every <= 12 s. Each redial costs CPU: with
    # 1,000 dead runners a 2 s cap kept 21% of a core busy, 10 s 8%
    # (docs/pools.md).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # What makes an unanswered ping drop the connection (see KEEPALIVE_OPTIONS).
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # One channel per runner carries many concurrent calls.
    ("grpc.use_local_subchannel_pool", 1),
)

# Channels to runners that list "keepalive" (their server allows it): a ping
# every second, calls or not, and the connection is dropped when one goes
# unanswered for a second. A hung (SIGSTOP) or cut-off runner thus fails its
# calls within ~2 s instead of at the next polls or the TCP timeout. Others
# keep CHANNEL_OPTIONS' 30 s: a Go gRPC server (fn's runners) answers pings
# more frequent than every 5 minutes with GOAWAY "too_many_pings" by default,
# which drops the calls in flight. Per ping: a few dozen bytes each way.
KEEPALIVE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 1_000),
    # grpc 1.85 closes the connection on an unanswered ping only after this
    # (default 1 min), whatever keepalive_timeout_ms says: with it a stopped
    # runner's calls fail in ~1.7 s, without it not within 60 s (measured).
    ("grpc.http2.ping_timeout_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# A Call reply or ReplyBatch holds a whole response body plus its meta and
# finished (a few KiB; headers are the function's): room for both.
_REPLY_HEADROOM = 1024 * 1024

# After a re-dial (new client certificate), how long calls still running on
# the old channel may take before it is closed under them: the longest sync
# timeout fn allows plus the placer's.
_RETIRE_GRACE_S = 3600.0


def status_from_pb(s: runner_pb2.RunnerStatus) -> RunnerStatus:
    return RunnerStatus(
        active=s.active, requests_received=s.requestsReceived,
        requests_handled=s.requestsHandled, failed=s.failed, error_code=s.errorCode,
        error_str=s.errorStr, is_network_disabled=s.isNetworkDisabled, draining=s.draining,
        drained=s.drained, slots_total=s.slots_total, slots_free=s.slots_free,
        memory_mb_total=s.memory_mb_total, memory_mb_free=s.memory_mb_free,
        warm_slots=tuple(s.warm_slots), runner_id=s.runner_id, custom=dict(s.customStatus),
        features=frozenset(s.features))


class GrpcRunner:
    """One runner, one long-lived channel; ``try_exec`` is one call on the Calls stream,
    one Call or one TryExec stream."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None, *,
                 metrics: Metrics | None = None, connect_timeout: float = 1.0,
                 server_name: str | None = None, unary: bool = True,
                 calls: bool = True, tls_source: ClientTLS | None = None,
                 ack: bool = True, accept_timeout: float | None = 1.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        """``tls_source`` (instead of ``credentials``): when its certificate
        files change, ``refresh`` re-dials the runner with them.
        ``max_response_bytes``: the most response body a call may bring back
        (``--max-response-bytes``); the runner is told it with every call.

        ``accept_timeout``: seconds a try may go unanswered (None: no limit);
        ``ack`` False: never ask for acknowledgements, even if the runner lists "ack".
        """
        self._address = address
        self._max_response_bytes = max_response_bytes
        self._server_name = server_name
        self._keepalive = False  # KEEPALIVE_OPTIONS: once the runner lists "keepalive"
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

    def _channel_options(self) -> list[tuple[str, Any]]:
        options = dict(CHANNEL_OPTIONS)
        # A receive limit that lets a whole reply of the response limit in.
        least = self._max_response_bytes + _REPLY_HEADROOM
        key = "grpc.max_receive_message_length"
        options[key] = max(options[key], least)
        if self._keepalive:
            options.update(KEEPALIVE_OPTIONS)
        if self._server_name:
            options["grpc.ssl_target_name_override"] = self._server_name
        return list(options.items())

    def _dial(self, credentials: grpc.ChannelCredentials | None) -> None:
        """A new channel (with its stub and call stream); calls from now on use it."""
        self._credentials = credentials
        options = self._channel_options()
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self._address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self._address, credentials,
                                                    options=options)
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)
        self._call_stream = CallStream(self._stub, self._watch)
        # Connect now, so the first call finds the runner ready (or known down).
        self._channel.get_state(try_to_connect=True)

    def follow_tls(self) -> bool:
        """Re-dial with the new client certificate once the LB's files changed; True if it did.

        A channel keeps the credentials it was built with, also when it
        reconnects: without this, a runner that restarts after the LB's old
        certificate expired (or its CA was replaced) would stay unreachable.
        Calls already running finish on the old channel, which is then closed.
        """
        src = self._tls_source
        if src is None or self._closed or src.refresh() == self._tls_generation:
            return False
        self._tls_generation = src.generation
        self._redial(src.credentials())
        log.info("re-dialling runner with the new client certificate",
                 extra=kv(runner=self._address, tls_generation=self._tls_generation))
        return True

    def redial_if_failing(self) -> bool:
        """Re-dial a channel that sits in gRPC's reconnect back-off; True if it did.

        After a partition or a restart gRPC waits up to 10 s between connection
        attempts (CHANNEL_OPTIONS); a poll that finds the channel failing dials
        afresh, so a runner that is back is found by the poll instead of at the
        end of the back-off. The prober's own back-off bounds how often.
        """
        if self._closed:
            return False
        if self._channel.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return False
        self._redial(self._credentials)
        return True

    def follow_keepalive(self, status: RunnerStatus) -> bool:
        """Re-dial with KEEPALIVE_OPTIONS once ``status`` lists "keepalive" (without
        them once it does not); True if it did. Calls running finish on the old channel."""
        want = "keepalive" in status.features
        if self._closed or want == self._keepalive:
            return False
        self._keepalive = want
        self._redial(self._credentials)
        log.info("re-dialled runner", extra=kv(runner=self._address,
                                               keepalive="1s" if want else "30s"))
        return True

    def _redial(self, credentials: grpc.ChannelCredentials | None) -> None:
        old_channel, old_stream = self._channel, self._call_stream
        self._dial(credentials)
        self._retiring.append(old_channel)
        self._keep(asyncio.create_task(self._retire(old_channel, old_stream)))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it is done (``close`` cancels what is left)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, channel: grpc.aio.Channel, stream: CallStream) -> None:
        # Calls on the old stream get their replies; then the stream ends, and
        # the channel closes once its unary and TryExec calls are done.
        await stream.wait_idle()
        await stream.close()
        await channel.close(grace=_RETIRE_GRACE_S)
        self._retiring.remove(channel)

    @property
    def address(self) -> str:
        return self._address

    async def _connected(self) -> bool:
        state = self._channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            return True
        # Wait for the connection attempt to settle, but give up on the first
        # failure (refused, TLS handshake) instead of waiting out the timeout:
        # the placer should move on to the next runner at once.
        # gRPC keeps reconnecting in the background.
        deadline = time.monotonic() + self._connect_timeout
        while state != grpc.ChannelConnectivity.READY:
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                         grpc.ChannelConnectivity.SHUTDOWN):
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                return False
            state = self._channel.get_state()
        return True

    def _explain_unreachable(self) -> None:
        """Log why the runner is unreachable (refused, TLS handshake, ...), at most every 10 s.

        The channel state alone says nothing of the cause; one cheap Status RPC
        that fails fast carries gRPC's error text (e.g. CERTIFICATE_VERIFY_FAILED).
        """
        now = time.monotonic()
        if now - self._last_explained < 10.0 or self._closed:
            return
        self._last_explained = now

        async def probe() -> None:
            try:
                await self._stub.Status(empty_pb2.Empty(), timeout=2.0)
            except grpc.aio.AioRpcError as e:
                tls = self._tls_cause(e)
                log.warning("runner unreachable", extra=kv(
                    runner=self._address, code=e.code().name, cause=e.details(),
                    **({"tls_cause": tls} if tls else {})))

        self._keep(asyncio.create_task(probe()))

    def _tls_cause(self, e: grpc.aio.AioRpcError) -> str:
        """What the TLS library said (expired or unknown certificate, wrong name), or ""."""
        if not self.tls:
            return ""
        from fnlb.tls import tls_failure_cause

        material = self._tls_source.material if self._tls_source is not None else None
        text = f"{e.details()}\n{e.debug_error_string()}"
        return tls_failure_cause(text, material) or ""

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
        log.debug("runner did not answer a try in time", extra=kv(
            runner=self._address, accept_timeout=self._watch.timeout))
        listener = self.on_unanswered
        if listener is not None:
            listener(reason)

    async def try_exec(self, call: RunnerCall) -> Attempt:
        if self._closed:
            return Attempt(False, RunnerUnreachable(f"runner {self._address} is closed"))
        if not await self._connected():
            state = self._channel.get_state().name
            self._explain_unreachable()
            return Attempt(False, RunnerUnreachable(
                f"runner {self._address} unreachable (channel {state})"))
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
        return await try_exec_stream(self._stub, call, self._answers, self._keep,
                                     acks=acks, watch=self._watch)

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
            reply: runner_pb2.CallReply = await self._stub.Call(self._call_request(call))
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
        """The runner's Status RPC, and nothing else: no re-dial, no renegotiation."""
        s = await self._stub.Status(empty_pb2.Empty(), timeout=timeout)
        self._watch.heard()
        return status_from_pb(s)

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
            status = await self.status(timeout)
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
        self.negotiate(status)
        self.follow_keepalive(status)
        return status

    async def drain(self, wait: bool = False, timeout: float = 5.0) -> runner_pb2.CloseResponse:
        """Ask the runner itself to drain (its Close RPC)."""
        resp: runner_pb2.CloseResponse = await self._stub.Close(
            runner_pb2.CloseRequest(wait=wait), timeout=timeout)
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
                await channel.close(grace=None)


def make_runner_factory(metrics: Metrics, connect_timeout: float = 1.0,
                        server_name: str | None = None,
                        accept_timeout: float | None = 1.0,
                        ack: bool = True,
                        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> MTLSRunnerFactory:
    """fn's MTLSRunnerFactory: mTLS when given the LB's ClientTLS, plaintext otherwise.

    ``accept_timeout`` and ``ack``: as ``GrpcRunner``'s.
    """

    def factory(address: str, tls: ClientTLS | None) -> GrpcRunner:
        return GrpcRunner(address, metrics=metrics, connect_timeout=connect_timeout,
                          server_name=server_name, tls_source=tls,
                          accept_timeout=accept_timeout, ack=ack,
                          max_response_bytes=max_response_bytes)

    return factory


