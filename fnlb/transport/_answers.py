"""What a runner's answer means for the call: the commit rule's verdicts
(``fnlb.transport.commit``) turned into an ``Attempt``, and a finished call's
timings recorded. Shared by every path of ``GrpcRunner`` (Calls, Call, TryExec).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from fnlb.errors import ClientCanceled, DoesNotFit, RunnerError, RunnerUnreachable, ServerTooBusy
from fnlb.logs import kv
from fnlb.metrics import Metrics
from fnlb.phases import runner_phases
from fnlb.runnerpool import Attempt, RunnerCall
from fnlb.timefmt import parse_rfc3339
from fnlb.transport import commit
from fnlb.transport._response import DEFAULT_MAX_RESPONSE_BYTES, too_large
from fnlb.transport.commit import Verdict
from fnlb.v1 import runner_pb2

__all__ = ["Answers", "ProtocolMismatch"]

# GrpcRunner's logger, whichever of its modules logs.
log = logging.getLogger("fnlb.transport.grpc_runner")


class ProtocolMismatch(RunnerUnreachable):
    """The runner answered UNIMPLEMENTED: it speaks the other runner protocol
    (fnlb.transport.fn_runner) and never ran the call."""


def _ns(value: int) -> float:
    return value / 1e9


class Answers:
    """One runner's answers as attempts: NACK, does not fit, never reached, unacknowledged,
    canceled or committed.

    ``max_response_bytes``: the most response body the LB carries (runners are
    told it in every ``try``; a bigger body fails the call).
    """

    __slots__ = ("address", "_metrics", "max_response_bytes", "on_free")

    def __init__(self, address: str, metrics: Metrics,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.address = address
        self._metrics = metrics
        self.max_response_bytes = max_response_bytes
        # on_free(slots_free, memory_mb_free): what a finished piggybacked
        # (runner.proto, THE PIGGYBACK); the pool feeds it to its LoadTracker.
        self.on_free: Callable[[int, int], None] | None = None

    def replied(self, reply: runner_pb2.CallReply, call: RunnerCall) -> Attempt:
        """A CallReply (Call or Calls) as an attempt: NACK, or committed."""
        f = reply.finished
        has_http = reply.HasField("http")
        verdict = commit.replied(has_http=has_http, has_finished=reply.HasField("finished"),
                                 success=f.success, error_code=f.errorCode)
        if verdict is Verdict.NACK:
            return Attempt(False, ServerTooBusy(f.errorStr or "Timed out - server too busy"))
        if verdict is Verdict.DOES_NOT_FIT:
            return self.does_not_fit(f)
        call.timings.responded()
        if has_http and len(reply.body) > self.max_response_bytes:
            return Attempt(True, too_large(self.address, len(reply.body),
                                           self.max_response_bytes))
        if has_http:
            sink = call.response
            sink.start(reply.http.status_code or 200,
                       [(h.key, h.value) for h in reply.http.headers])
            sink.write(reply.body)
        if verdict is Verdict.INCOMPLETE:
            return Attempt(True, RunnerError(
                f"runner {self.address} answered the call without a finished message",
                runner=self.address, error_code=502))
        return self.finished(f, call)

    def finished(self, f: runner_pb2.CallFinished, call: RunnerCall) -> Attempt:
        """A committed call's ``finished``: record its timings, map its outcome."""
        self.record_finish(f, call)
        if not f.success:
            return Attempt(True, RunnerError(
                f.errorStr or "unknown error from runner", runner=self.address,
                error_code=f.errorCode or 500, user_error=f.errorUser))
        return Attempt(True, None)

    def does_not_fit(self, f: runner_pb2.CallFinished) -> Attempt:
        """A 507 before anything else: this runner can never run the call; not placed."""
        return Attempt(False, DoesNotFit(
            f"runner {self.address}: {f.errorStr or 'the call can never fit on this runner'}",
            runner=self.address, memory_mb_total=f.memory_mb_total or None))

    def rpc_failed(self, e: grpc.aio.AioRpcError, call: RunnerCall, *,
                   committed: bool, acks: bool = False, sent: bool = True) -> Attempt:
        """An RPC ended with an error status: NACK, never reached, unacknowledged,
        unsupported, canceled or committed (``sent``: as commit.rpc_failed's)."""
        code, details = e.code(), e.details()
        return self.failed(commit.rpc_failed(code, details, committed=committed, acks=acks,
                                             sent=sent),
                           code, details, call)

    def failed(self, verdict: Verdict, code: grpc.StatusCode, details: str | None,
               call: RunnerCall) -> Attempt:
        """The attempt for an RPC that ended with ``code``: NACK, never reached, canceled
        or failed after commit."""
        if verdict is Verdict.NACK:
            return Attempt(False, ServerTooBusy(details or "server too busy"))
        if verdict is Verdict.NEVER_REACHED:
            return Attempt(False, RunnerUnreachable(f"runner {self.address}: {details}"))
        if verdict is Verdict.UNACKED:
            return Attempt(False, RunnerUnreachable(
                f"runner {self.address}: {code.name}: {details} (before it acknowledged "
                "the call)"))
        if verdict is Verdict.UNSUPPORTED:
            # The runner does not serve the RPC: it never ran the call.
            return Attempt(False, ProtocolMismatch(
                f"runner {self.address} does not serve this protocol: {code.name}: {details}"))
        if verdict is Verdict.CANCELED:
            return Attempt(True, ClientCanceled())
        # Committed (or could have been): the call may have run; never re-send.
        log.warning("runner failed call after commit",
                    extra=kv(call_id=call.model.id, runner=self.address,
                             code=code.name, error=details))
        return Attempt(True, RunnerError(
            f"runner {self.address} failed the call: {code.name}: {details}",
            runner=self.address, error_code=502, lost=verdict.lost))

    def record_finish(self, f: runner_pb2.CallFinished, call: RunnerCall, *,
                      in_flight: bool = True) -> None:
        """``in_flight`` False: the attempt has ended here (a detached call's
        result read later), so its piggybacked free slots would count the call,
        still on the runner, as another LB's: they are not used."""
        on_free = self.on_free
        if on_free is not None and in_flight and f.HasField("slots_free"):
            on_free(f.slots_free, f.memory_mb_free)
        created = parse_rfc3339(f.createdAt)
        started = parse_rfc3339(f.startedAt)
        completed = parse_rfc3339(f.completedAt)
        if created and started and completed and created <= started <= completed:
            self._metrics.runner_sched_latency.observe((started - created).total_seconds())
            self._metrics.runner_exec_latency.observe((completed - started).total_seconds())
        call.timings.finished(runner_phases(
            scheduler_ns=f.schedulerDuration, execution_ns=f.executionDuration,
            image_pull_ns=f.imagePullWaitDuration, prep_ns=f.ctrPrepDuration,
            create_ns=f.ctrCreateDuration, init_ns=f.initStartTime,
            created=created, started=started, completed=completed))
        # The nanosecond durations are more precise than millisecond timestamps.
        if f.executionDuration > 0:
            call.add_user_execution_time(_ns(f.executionDuration))
        elif started and completed and started <= completed:
            call.add_user_execution_time((completed - started).total_seconds())
