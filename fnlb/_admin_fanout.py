"""``fnlb.v1.Admin`` in front of several workers (``fnlb serve --workers N``).

The supervisor serves ``FanOutAdminServicer``: every change goes to every
worker's private Admin endpoint, ListRunners merges their answers, and an
``AdminLedger`` replays the changes to a restarted worker. Calls are
authorized here (``fnlb.admin``'s gate), for the workers, which trust their
private unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from fnlb.admin import Context, _check_ttl, _Gate
from fnlb.authz import AdminPolicy
from fnlb.logs import kv
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["AdminLedger", "FanOutAdminServicer", "merge_runner_infos"]

# Named as before the split: log lines say logger=fnlb.admin.
log = logging.getLogger("fnlb.admin")

# (worker index, fnlb.v1.Admin stub) for every worker that is up now.
WorkerStubs = Callable[[], Sequence[tuple[int, lb_pb2_grpc.AdminStub]]]

# Worst first: ListRunners shows a runner in the most severe state any worker
# has it in, as each worker judges health on its own.
_STATE_SEVERITY = ("retiring", "draining", "ejected", "suspect", "unknown", "healthy")


def _severity(state: str) -> int:
    return _STATE_SEVERITY.index(state) if state in _STATE_SEVERITY else 0


def merge_runner_infos(answers: Sequence[Sequence[lb_pb2.RunnerInfo]]) -> list[lb_pb2.RunnerInfo]:
    """One row per runner address from every worker's ListRunners.

    The LB's own counts (``inflight``, ``placed``) are summed; what the runner
    reported (``runner_active``, slots, ``last_status_at``) comes from the
    freshest report; ``consecutive_failures`` and its ``last_error`` from the
    worker that saw the most; ``state`` is the most severe; sources are united.
    """
    rows: dict[str, list[lb_pb2.RunnerInfo]] = {}
    for answer in answers:
        for info in answer:
            rows.setdefault(info.address, []).append(info)
    out = []
    for address, infos in rows.items():
        fresh = max(infos, key=lambda i: i.last_status_at)
        failing = max(infos, key=lambda i: (i.consecutive_failures, bool(i.last_error)))
        sources = sorted({src for i in infos for src in i.source.split(",") if src})
        out.append(lb_pb2.RunnerInfo(
            address=address, state=min((i.state for i in infos), key=_severity),
            inflight=sum(i.inflight for i in infos), placed=sum(i.placed for i in infos),
            runner_active=fresh.runner_active, slots_total=fresh.slots_total,
            slots_free=fresh.slots_free, last_status_at=fresh.last_status_at,
            consecutive_failures=failing.consecutive_failures,
            last_error=failing.last_error or max(i.last_error for i in infos),
            source=",".join(sources), protocol=fresh.protocol))
    return out


class AdminLedger:
    """What the Admin API changed, so that a restarted worker can be told again.

    Registered runners (a TTL) are kept until their TTL runs out, runners added
    for good until removed, drains until the runner leaves every worker's pool.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._permanent: set[str] = set()
        self._expiry: dict[str, float] = {}
        self._drained: set[str] = set()

    def added(self, address: str, ttl_s: int) -> None:
        if ttl_s:
            self._expiry[address] = self._clock() + ttl_s
        else:
            self._permanent.add(address)

    def removed(self, address: str) -> None:
        self._permanent.discard(address)
        self._expiry.pop(address, None)
        self._drained.discard(address)

    def drained(self, address: str) -> None:
        self._drained.add(address)

    def forget_drained(self, address: str) -> None:
        self._drained.discard(address)

    def holds(self, address: str) -> bool:
        return address in self._permanent or self._expiry.get(address, 0.0) > self._clock()

    def adds(self) -> list[lb_pb2.AddRunnerRequest]:
        """AddRunner requests that rebuild the Admin-made pool; expired TTLs are dropped."""
        now = self._clock()
        for address in [a for a, t in self._expiry.items() if t <= now]:
            del self._expiry[address]
        reqs = [lb_pb2.AddRunnerRequest(address=a) for a in sorted(self._permanent)]
        reqs += [lb_pb2.AddRunnerRequest(address=a, ttl_s=max(1, math.ceil(t - now)))
                 for a, t in sorted(self._expiry.items())]
        return reqs

    def drains(self) -> list[str]:
        return sorted(self._drained)


def _timeout(context: Context, default: float) -> float:
    remaining = context.time_remaining()
    return default if remaining is None else max(min(remaining, default), 0.001)


def _rpc_error(e: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code(), e.details() or ""
    return grpc.StatusCode.UNAVAILABLE, repr(e)


class FanOutAdminServicer(lb_pb2_grpc.AdminServicer):
    """``fnlb.v1.Admin`` in front of N workers, each with its own pool.

    Changes reach every worker that is up (and, through the ledger, one that
    restarts later); an answer from at least one worker is a success, so a
    registration heartbeat does not fail while one worker restarts.
    """

    def __init__(self, workers: WorkerStubs, placer: str,
                 ledger: AdminLedger | None = None, policy: AdminPolicy | None = None) -> None:
        self._workers = workers
        self._placer = placer
        self.ledger = ledger if ledger is not None else AdminLedger()
        # Authorized here, against the caller: workers see only the supervisor.
        self._gate = _Gate(policy)

    async def _fan_out(self, method: str, request: Any, timeout: float
                       ) -> tuple[list[tuple[Any, Sequence[tuple[str, Any]]]],
                                  list[tuple[grpc.StatusCode, str]]]:
        """``request`` to every worker that is up: (response, trailing metadata) of
        those that answered, and the errors of the others."""
        targets = list(self._workers())

        async def one(stub: lb_pb2_grpc.AdminStub) -> tuple[Any, Sequence[tuple[str, Any]]]:
            call = getattr(stub, method)(request, timeout=timeout)
            resp = await call
            return resp, tuple(await call.trailing_metadata() or ())

        results = await asyncio.gather(*(one(stub) for _, stub in targets),
                                       return_exceptions=True)
        answered = [r for r in results if not isinstance(r, BaseException)]
        errors = []
        for (i, _), r in zip(targets, results, strict=True):
            if isinstance(r, BaseException):
                code, details = _rpc_error(r)
                errors.append((code, details))
                if answered:
                    log.warning("worker did not take an admin request", extra=kv(
                        worker=i, rpc=method, code=code.name, error=details))
        return answered, errors

    async def _fail(self, context: Context,
                    errors: list[tuple[grpc.StatusCode, str]]) -> None:
        """No worker answered: the most telling error, a worker's verdict on the
        request (NOT_FOUND, INVALID_ARGUMENT, ...) over UNAVAILABLE."""
        if not errors:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no LB worker is running")
        code, details = min(errors, key=lambda e: e[0] == grpc.StatusCode.UNAVAILABLE)
        await context.abort(code, details)

    async def _change(self, context: Context, method: str,
                      request: Any, timeout: float = 10,
                      refused: Callable[[], None] | None = None
                      ) -> list[tuple[Any, Sequence[tuple[str, Any]]]]:
        """Fan a change out; abort the call when no worker took it (``refused`` first,
        when a worker turned the request down rather than being unreachable)."""
        answered, errors = await self._fan_out(method, request, _timeout(context, timeout))
        if not answered:
            if refused is not None and any(
                    code != grpc.StatusCode.UNAVAILABLE for code, _ in errors):
                refused()
            await self._fail(context, errors)
        return answered

    async def ListRunners(self, request: lb_pb2.ListRunnersRequest,
                          context: grpc.aio.ServicerContext[
                              lb_pb2.ListRunnersRequest, lb_pb2.ListRunnersResponse]
                          ) -> lb_pb2.ListRunnersResponse:
        await self._gate.admit(context, "ListRunners")
        answered, errors = await self._fan_out("ListRunners", request, _timeout(context, 10))
        if not answered:
            await self._fail(context, errors)
        if errors:
            context.set_trailing_metadata((("fnlb-workers-unanswered", str(len(errors))),))
        return lb_pb2.ListRunnersResponse(
            runners=merge_runner_infos([resp.runners for resp, _ in answered]),
            placer=self._placer)

    async def AddRunner(self, request: lb_pb2.AddRunnerRequest,
                        context: grpc.aio.ServicerContext[
                              lb_pb2.AddRunnerRequest, lb_pb2.AddRunnerResponse],
                        ) -> lb_pb2.AddRunnerResponse:
        # Resolved here: a worker sees the supervisor's unix socket, not the caller.
        caller, address, rule = await self._gate.admit(
            context, "AddRunner", request.address, request.ttl_s)
        await _check_ttl(request.ttl_s, context)
        # Ledger first, in the same step as _fan_out picks its targets: a worker
        # that comes up in between is either a target or replays this entry.
        self.ledger.added(address, request.ttl_s)
        answered = await self._change(
            context, "AddRunner", lb_pb2.AddRunnerRequest(address=address, ttl_s=request.ttl_s))
        added = any(resp.added for resp, _ in answered)
        if added:
            log.info("runner added by admin", extra=kv(
                runner=address, ttl_s=request.ttl_s, peer=context.peer(), workers=len(answered),
                caller=",".join(caller.identities[:3]), rule=rule))
        return lb_pb2.AddRunnerResponse(added=added)

    async def RemoveRunner(self, request: lb_pb2.RemoveRunnerRequest,
                           context: grpc.aio.ServicerContext[
                              lb_pb2.RemoveRunnerRequest, lb_pb2.RemoveRunnerResponse]
                           ) -> lb_pb2.RemoveRunnerResponse:
        _, address, _ = await self._gate.admit(context, "RemoveRunner", request.address)
        self.ledger.removed(address)
        answered = await self._change(
            context, "RemoveRunner", lb_pb2.RemoveRunnerRequest(address=address))
        return lb_pb2.RemoveRunnerResponse(removed=any(resp.removed for resp, _ in answered))

    async def DrainRunner(self, request: lb_pb2.DrainRunnerRequest,
                          context: grpc.aio.ServicerContext[
                              lb_pb2.DrainRunnerRequest, lb_pb2.DrainRunnerResponse]
                          ) -> lb_pb2.DrainRunnerResponse:
        _, address, _ = await self._gate.admit(context, "DrainRunner", request.address)
        self.ledger.drained(address)
        answered = await self._change(
            context, "DrainRunner", lb_pb2.DrainRunnerRequest(address=address), timeout=30,
            # e.g. NOT_FOUND: nothing to drain, so nothing to replay either
            refused=lambda: self.ledger.forget_drained(address))
        drain_errors = [v for _, md in answered for k, v in md if k == "fnlb-drain-error"]
        if drain_errors:
            context.set_trailing_metadata((("fnlb-drain-error", str(drain_errors[0])[:200]),))
        return lb_pb2.DrainRunnerResponse(draining=True)

    async def replay(self, index: int, stub: lb_pb2_grpc.AdminStub) -> None:
        """Tell a (re)started worker what the Admin API changed before it existed."""
        adds, drains = self.ledger.adds(), self.ledger.drains()
        sent = []
        for req in adds:
            if not self.ledger.holds(req.address):
                continue  # removed meanwhile
            sent.append(req.address)
            try:
                await stub.AddRunner(req, timeout=10)
            except grpc.aio.AioRpcError as e:
                log.warning("replaying an added runner to a worker failed", extra=kv(
                    worker=index, runner=req.address, code=e.code().name, error=e.details()))
        for address in drains:
            try:
                await stub.DrainRunner(lb_pb2.DrainRunnerRequest(address=address), timeout=30)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    self.ledger.forget_drained(address)  # gone from the pool
                else:
                    log.warning("replaying a drain to a worker failed", extra=kv(
                        worker=index, runner=address, code=e.code().name, error=e.details()))
        # A RemoveRunner that reached this worker while the replay's AddRunner for
        # the same runner was on its way would be undone by it: remove it again.
        for address in sent:
            if not self.ledger.holds(address):
                with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND: already gone
                    await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address=address),
                                            timeout=10)
        if adds or drains:
            log.info("admin changes replayed to worker", extra=kv(
                worker=index, added=len(adds), drained=len(drains)))
