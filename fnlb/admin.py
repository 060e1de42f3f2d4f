"""``fnlb.v1.Admin``: list, add, remove and drain the LB's runners.

Served on its own address (``--admin-listen``, loopback by default), never on
the public front door: who can reach the LB's clients' port must not be able to
change its pool. With front-door mTLS (``--front-tls-ca``) the admin server
requires the same client certificates.

Self-registration: ``AddRunner{address, ttl_s}`` keeps a runner for ``ttl_s``
seconds; the runner repeats it as a heartbeat (``fnlb.registration``). A runner
that listens on every interface may send ``0.0.0.0:PORT`` (or ``:PORT``); the
LB then uses the address the request came from.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import unquote

import grpc

from fnlb.errors import ConfigError, FnlbError
from fnlb.logs import kv
from fnlb.pools import DynamicRunnerPool, RunnerView
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["AdminServicer", "MAX_TTL_S", "peer_host", "runner_info"]

log = logging.getLogger(__name__)

MAX_TTL_S = 24 * 3600
_UNSPECIFIED = ("", "0.0.0.0", "[::]", "::")


def peer_host(peer: str) -> str | None:
    """The IP in a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``), bracketed for v6."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        host = unquote(rest.rpartition(":")[0]).strip("[]")
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return None
        return f"[{host}]"
    return None


def runner_info(v: RunnerView) -> lb_pb2.RunnerInfo:
    s = v.status
    return lb_pb2.RunnerInfo(
        address=v.address, state=v.state, inflight=v.inflight,
        runner_active=s.active if s else 0, slots_total=s.slots_total if s else 0,
        slots_free=s.slots_free if s else 0, last_error=v.last_error,
        source=",".join(v.sources), last_status_at=v.last_status_at, placed=v.placed,
        consecutive_failures=v.consecutive_failures)


class AdminServicer(lb_pb2_grpc.AdminServicer):
    def __init__(self, pool: DynamicRunnerPool, placer: str) -> None:
        self._pool = pool
        self._placer = placer

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any],
                    e: FnlbError | ValueError) -> None:
        code = e.code if isinstance(e, FnlbError) else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, str(e))

    async def ListRunners(self, request: lb_pb2.ListRunnersRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> lb_pb2.ListRunnersResponse:
        return lb_pb2.ListRunnersResponse(
            runners=[runner_info(v) for v in self._pool.views()], placer=self._placer)

    async def _address(self, address: str,
                       context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """``address`` with an unspecified host replaced by the caller's IP."""
        address = address.strip()
        host, sep, port = address.rpartition(":")
        if not sep or host not in _UNSPECIFIED:
            return address
        peer = peer_host(context.peer())
        if peer is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"address: {address!r} has no host and the caller's "
                                "address is unknown")
        return f"{peer}:{port}"

    async def AddRunner(self, request: lb_pb2.AddRunnerRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> lb_pb2.AddRunnerResponse:
        if not 0 <= request.ttl_s <= MAX_TTL_S:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ttl_s: must be 0..{MAX_TTL_S}, got {request.ttl_s}")
        address = await self._address(request.address, context)
        try:
            added = self._pool.add(address, ttl=float(request.ttl_s) if request.ttl_s else None)
        except (ConfigError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"address: {e}")
        if added:
            log.info("runner added by admin", extra=kv(
                runner=address, ttl_s=request.ttl_s, peer=context.peer()))
        return lb_pb2.AddRunnerResponse(added=added)

    async def RemoveRunner(self, request: lb_pb2.RemoveRunnerRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> lb_pb2.RemoveRunnerResponse:
        address = await self._address(request.address, context)
        try:
            removed = self._pool.remove(address)
        except (FnlbError, ValueError) as e:
            await self._fail(context, e)
        return lb_pb2.RemoveRunnerResponse(removed=removed)

    async def DrainRunner(self, request: lb_pb2.DrainRunnerRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> lb_pb2.DrainRunnerResponse:
        try:
            error = await self._pool.drain(await self._address(request.address, context))
        except (FnlbError, ValueError) as e:
            await self._fail(context, e)
        if error:
            # Out of placement here all the same; the caller learns the runner may
            # not know it is draining (e.g. it is down).
            context.set_trailing_metadata((("fnlb-drain-error", error[:200]),))
        return lb_pb2.DrainRunnerResponse(draining=True)
