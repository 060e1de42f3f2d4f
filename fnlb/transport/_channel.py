"""The channel under a ``GrpcRunner``: its options, dialling and re-dialling.

A runner's channel is re-dialled when the LB's client certificate changes
(``follow_tls``), when it sits in gRPC's reconnect back-off
(``redial_if_failing``) and when the runner starts or stops listing
"keepalive" (``follow_keepalive``); calls running on the old channel finish
there before it is closed. When a call finds the runner unreachable, one
cheap Status RPC says why (``_explain_unreachable``).

A runner that carried no call for a while has its channel closed
(``park_if_idle``, the pool's ``--runner-idle-close``): an open channel costs
the LB ~37 KiB and, with "keepalive", a ping a second. The next call dials
again (``_unpark``); Status polls meanwhile go over a channel made for the one
poll (``GrpcRunner._ask_status``), so polling does not keep idle channels open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from fnlb.logs import kv
from fnlb.runnerpool import RunnerStatus
from fnlb.transport._accept import AcceptWatch
from fnlb.transport.callstream import CallStream
from fnlb.transport.fn_runner import FnRunnerStub
from fnlb.v1 import runner_pb2_grpc

if TYPE_CHECKING:
    from fnlb.tls import ClientTLS

__all__ = ["CHANNEL_OPTIONS", "KEEPALIVE_OPTIONS", "RunnerChannel"]

# Named as before the split: log lines say logger=fnlb.transport.grpc_runner.
log = logging.getLogger("fnlb.transport.grpc_runner")

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


class RunnerChannel:
    """The channel half of ``GrpcRunner``, which sets these attributes in ``__init__``."""

    _address: str
    _target: str
    _max_response_bytes: int
    _server_name: str | None
    _keepalive: bool
    _pinging: bool  # the channel was dialled with KEEPALIVE_OPTIONS
    _tls_source: ClientTLS | None
    _tls_generation: int
    _credentials: grpc.ChannelCredentials | None
    _channel: grpc.aio.Channel
    _stub: runner_pb2_grpc.RunnerStub
    _fn_stub: FnRunnerStub
    _call_stream: CallStream
    _watch: AcceptWatch
    _retiring: list[grpc.aio.Channel]
    _background: set[asyncio.Task[None]]
    _connect_timeout: float
    _closed: bool
    _last_explained: float
    _parked: bool  # the channel was closed for being idle; the next call re-dials
    _busy: int  # try_exec calls running now
    _asking: int  # Status calls running now (they do not make a runner busy)
    _used_at: float  # monotonic: when the last call started or ended
    tls: bool

    def _channel_options(self) -> list[tuple[str, Any]]:
        options = dict(CHANNEL_OPTIONS)
        # A receive limit that lets a whole reply of the response limit in.
        least = self._max_response_bytes + _REPLY_HEADROOM
        key = "grpc.max_receive_message_length"
        options[key] = max(options[key], least)
        if self._pinging:
            options.update(KEEPALIVE_OPTIONS)
        if self._server_name:
            options["grpc.ssl_target_name_override"] = self._server_name
        return list(options.items())

    def _new_channel(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        options = self._channel_options()
        if credentials is None:
            return grpc.aio.insecure_channel(self._target, options=options)
        return grpc.aio.secure_channel(self._target, credentials, options=options)

    def _dial(self, credentials: grpc.ChannelCredentials | None) -> None:
        """A new channel (with its stub and call stream); calls from now on use it."""
        self._credentials = credentials
        self._parked = False
        self._channel = self._new_channel(credentials)
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)
        self._fn_stub = FnRunnerStub(self._channel)
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
        if self._closed or self._parked:
            return False
        if self._channel.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return False
        self._redial(self._credentials)
        return True

    def follow_keepalive(self, status: RunnerStatus) -> bool:
        """Ping every second once ``status`` lists "keepalive", not at all once it does
        not; True if that took a re-dial. Calls running finish on the old channel.

        The first channel is dialled with KEEPALIVE_OPTIONS already (unless the
        runner is known to be fn's): runners that list "keepalive" (the stub)
        keep it, and only those that do not pay a second dial. Starting a pool
        of thousands is CPU-bound on dials (README, Large pools).
        """
        want = "keepalive" in status.features
        if self._closed:
            return False
        if want != self._keepalive:
            self._keepalive = want
            if want and self._pinging:  # dialled so: no re-dial, say it all the same
                log.info("runner allows keepalive pings", extra=kv(runner=self._address,
                                                                   keepalive="1s"))
        if want == self._pinging:
            return False
        self._pinging = want
        self._redial(self._credentials)
        log.info("re-dialled runner", extra=kv(runner=self._address,
                                               keepalive="1s" if want else "30s"))
        return True

    def _reconnected(self) -> None:
        """Called after a re-dial: what was learned of the runner may have changed."""

    def _redial(self, credentials: grpc.ChannelCredentials | None) -> None:
        if self._parked:
            self._credentials = credentials  # the next dial uses them
            return
        old_channel, old_stream = self._channel, self._call_stream
        self._dial(credentials)
        self._reconnected()
        self._retiring.append(old_channel)
        self._keep(asyncio.create_task(self._retire(old_channel, old_stream)))

    # -- idle channels -----------------------------------------------------------

    @property
    def parked(self) -> bool:
        """True while the channel is closed for being idle (the next call re-dials)."""
        return self._parked

    def idle_for(self, now: float) -> float:
        """Seconds since the last call on this runner started or ended (0 while one runs)."""
        return 0.0 if self._busy else now - self._used_at

    def may_park(self, now: float, idle: float) -> bool:
        """Would ``park_if_idle`` close the channel now? (No side effects.)"""
        return not (self._closed or self._parked or self._busy or self._asking
                    or self._background or self._retiring or self._call_stream.inflight
                    or now - self._used_at < idle)

    async def park_if_idle(self, now: float, idle: float) -> bool:
        """Close the channel if no call ran for ``idle`` seconds; True if it did.

        Not while a call, a detached call's result or an older channel's calls
        are still on the way. Calls from now on dial a new channel.
        """
        if not self.may_park(now, idle):
            return False
        self._parked = True  # before any await: a call arriving now dials afresh
        stream, channel = self._call_stream, self._channel
        await stream.close()
        await channel.close(grace=None)
        log.debug("closed idle runner channel", extra=kv(runner=self._address,
                                                         idle_s=f"{now - self._used_at:.0f}"))
        return True

    def _unpark(self) -> None:
        """A call for a runner whose channel was closed for being idle: dial again."""
        if self._parked and not self._closed:
            self._dial(self._credentials)

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
