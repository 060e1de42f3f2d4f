"""``fnlb.v1.Admin``: list, add, remove and drain the LB's runners.

Served on its own address (``--admin-listen``, loopback by default), never on
the public front door: who can reach the LB's clients' port must not be able to
change its pool. With front-door mTLS (``--front-tls-ca``) the admin server
requires the same client certificates.

Self-registration: ``AddRunner{address, ttl_s}`` keeps a runner for ``ttl_s``
seconds; the runner repeats it as a heartbeat (``fnlb.runnerside.register_loop``). A runner
that listens on every interface may send ``0.0.0.0:PORT`` (or ``:PORT``); the
LB then uses the address the request came from.

With ``fnlb serve --workers N`` the supervisor serves ``FanOutAdminServicer``
(``fnlb._admin_fanout``) instead.

Every call is authorized first (``fnlb.authz.AdminPolicy``: ``--admin-allow``,
``--register-allow``); a refusal is PERMISSION_DENIED naming the caller's
identity and the rule. The fan-out servicer authorizes for the workers, which
trust their private unix socket.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote

import grpc

from fnlb.authz import AdminPolicy, Caller, Decision, caller_of
from fnlb.error_status import grpc_status
from fnlb.errors import ConfigError, FnlbError
from fnlb.logs import kv
from fnlb.pools import DynamicRunnerPool, RunnerView, parse_address
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["AdminServicer", "MAX_ADDRESS_BYTES", "MAX_TTL_S", "admin_policy", "peer_host",
           "runner_info"]

if TYPE_CHECKING:
    from fnlb.config import LBConfig

# The context of any Admin RPC, for the helpers they share.
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

MAX_TTL_S = 24 * 3600
_UNSPECIFIED = ("", "0.0.0.0", "[::]", "::")
# A DNS name is at most 253 bytes, a label 63; plus brackets and ":65535".
MAX_HOST_BYTES = 253
MAX_ADDRESS_BYTES = MAX_HOST_BYTES + 2 + 6
_MAX_LABEL = 63
# A refused caller is logged once per this many seconds (per caller and method):
# refusals must not become a lever to flood the log.
_REFUSAL_LOG_INTERVAL_S = 60.0


def admin_policy(config: LBConfig) -> AdminPolicy:
    """The Admin policy of an ``LBConfig`` (its ``--admin-allow`` and ``--register-allow``)."""
    client_ca = config.front_tls is not None and config.front_tls.ca is not None
    policy = AdminPolicy.from_flags(config.admin_allow, config.register_allow,
                                    client_ca=client_ca)
    if config.discovery == "registration" and client_ca and not policy.anyone_registers:
        log.warning("--discovery registration: only --admin-allow callers may register "
                    "runners; let runners register their own address with "
                    "--register-allow self (or self:PATTERN)")
    return policy


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


async def _caller_address(address: str, context: Context) -> str:
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


def _host(address: str) -> str:
    """The host of a parsed runner address, without ``fn://`` or ``fnlb://``."""
    return address.partition("://")[2].rpartition(":")[0] if "://" in address \
        else address.rpartition(":")[0]


async def _runner_address(text: str, context: Context) -> str:
    """The request's runner address, bounded, resolved (``_caller_address``) and normalised."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ADDRESS_BYTES:
        # Not echoed: a megabyte of host name must not reach the reply or the log.
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"address: {size} bytes; a runner address is HOST:PORT with a "
                            f"host name of at most {MAX_HOST_BYTES} bytes")
    # fn://HOST:PORT names an fn runner: the scheme stays, the host is resolved.
    scheme, sep, rest = text.strip().partition("://")
    address = await _caller_address(rest if sep else text, context)
    try:
        address = parse_address(f"{scheme}://{address}" if sep else address, source="address")
    except ConfigError as e:  # the message names the field: "address: ..."
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    host = _host(address)
    if not host.startswith("[") and (len(host) > MAX_HOST_BYTES or any(
            len(label) > _MAX_LABEL for label in host.split("."))):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"address: host name must be at most {MAX_HOST_BYTES} bytes, "
                            f"each dot-separated label at most {_MAX_LABEL}")
    return address


class _Gate:
    """The Admin servicers' authorization: decide, refuse with PERMISSION_DENIED, log."""

    def __init__(self, policy: AdminPolicy | None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.policy = policy if policy is not None else AdminPolicy()
        self._clock = clock
        self._logged: dict[tuple[str, str], float] = {}

    async def admit(self, context: Context, method: str,
                    address: str | None = None, ttl_s: int = 0) -> tuple[Caller, str, str]:
        """(caller, the runner address resolved, the rule that allowed it); aborts if refused.

        A caller no rule could allow is refused before its address is looked at.
        """
        caller = caller_of(context)
        decision = self.policy.decide(method, caller)
        if not (decision.allowed or decision.needs_address):
            await self._refuse(context, method, caller, decision)
        resolved = "" if address is None else await _runner_address(address, context)
        if decision.needs_address:
            decision = self.policy.decide(method, caller, _host(resolved), ttl_s)
            if not decision.allowed:
                await self._refuse(context, method, caller, decision)
        return caller, resolved, decision.reason

    async def _refuse(self, context: Context, method: str,
                      caller: Caller, decision: Decision) -> None:
        who = (caller.identities[0] if caller.identities else str(caller.ip))[:128]
        now = self._clock()
        key = (method, who)
        if now - self._logged.get(key, -math.inf) >= _REFUSAL_LOG_INTERVAL_S:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
            log.warning("admin call refused", extra=kv(
                rpc=method, caller=who, peer=context.peer(), reason=decision.reason))
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"Admin/{method} refused: {decision.reason}")


async def _check_ttl(ttl_s: int, context: Context) -> None:
    if not 0 <= ttl_s <= MAX_TTL_S:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"ttl_s: must be 0..{MAX_TTL_S}, got {ttl_s}")


def runner_info(v: RunnerView) -> lb_pb2.RunnerInfo:
    s = v.status
    return lb_pb2.RunnerInfo(
        address=v.address, state=v.state, inflight=v.inflight,
        runner_active=s.active if s else 0, slots_total=s.slots_total if s else 0,
        slots_free=s.slots_free if s else 0, last_error=v.last_error,
        source=",".join(v.sources), last_status_at=v.last_status_at, placed=v.placed,
        consecutive_failures=v.consecutive_failures, protocol=v.protocol)


class AdminServicer(lb_pb2_grpc.AdminServicer):
    """``fnlb.v1.Admin`` over one pool; ``policy`` None: loopback callers only."""

    def __init__(self, pool: DynamicRunnerPool, placer: str,
                 policy: AdminPolicy | None = None) -> None:
        self._pool = pool
        self._placer = placer
        self._gate = _Gate(policy)

    async def _fail(self, context: Context,
                    e: FnlbError | ConfigError) -> None:
        await context.abort(grpc_status(e), str(e))

    async def ListRunners(self, request: lb_pb2.ListRunnersRequest,
                          context: grpc.aio.ServicerContext[
                              lb_pb2.ListRunnersRequest, lb_pb2.ListRunnersResponse]
                          ) -> lb_pb2.ListRunnersResponse:
        await self._gate.admit(context, "ListRunners")
        return lb_pb2.ListRunnersResponse(
            runners=[runner_info(v) for v in self._pool.views()], placer=self._placer)

    async def AddRunner(self, request: lb_pb2.AddRunnerRequest,
                        context: grpc.aio.ServicerContext[
                              lb_pb2.AddRunnerRequest, lb_pb2.AddRunnerResponse],
                        ) -> lb_pb2.AddRunnerResponse:
        caller, address, rule = await self._gate.admit(
            context, "AddRunner", request.address, request.ttl_s)
        await _check_ttl(request.ttl_s, context)
        try:
            added = self._pool.add(address, ttl=float(request.ttl_s) if request.ttl_s else None)
        except ConfigError as e:  # the message names the field: "address: ..."
            await self._fail(context, e)
        if added:
            log.info("runner added by admin", extra=kv(
                runner=address, ttl_s=request.ttl_s, peer=context.peer(),
                caller=",".join(caller.identities[:3]), rule=rule))
        return lb_pb2.AddRunnerResponse(added=added)

    async def RemoveRunner(self, request: lb_pb2.RemoveRunnerRequest,
                           context: grpc.aio.ServicerContext[
                              lb_pb2.RemoveRunnerRequest, lb_pb2.RemoveRunnerResponse]
                           ) -> lb_pb2.RemoveRunnerResponse:
        _, address, _ = await self._gate.admit(context, "RemoveRunner", request.address)
        try:
            removed = self._pool.remove(address)
        except (FnlbError, ConfigError) as e:
            await self._fail(context, e)
        return lb_pb2.RemoveRunnerResponse(removed=removed)

    async def DrainRunner(self, request: lb_pb2.DrainRunnerRequest,
                          context: grpc.aio.ServicerContext[
                              lb_pb2.DrainRunnerRequest, lb_pb2.DrainRunnerResponse]
                          ) -> lb_pb2.DrainRunnerResponse:
        _, address, _ = await self._gate.admit(context, "DrainRunner", request.address)
        try:
            error = await self._pool.drain(address)
        except (FnlbError, ConfigError) as e:
            await self._fail(context, e)
        if error:
            # Out of placement here all the same; the caller learns the runner may
            # not know it is draining (e.g. it is down).
            context.set_trailing_metadata((("fnlb-drain-error", error[:200]),))
        return lb_pb2.DrainRunnerResponse(draining=True)
