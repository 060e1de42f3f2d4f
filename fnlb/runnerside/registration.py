"""Runner self-registration: heartbeat ``Admin/AddRunner`` to an LB.

A runner started with ``--register-with LB_ADMIN_ADDR`` runs ``register_loop``
beside its server: it adds itself with a TTL and repeats that every third of
the TTL, so the LB drops it within ``ttl_s`` of the runner going silent (a
crash, a partition). On a clean stop it removes itself at once.

    stop = asyncio.Event()
    task = asyncio.create_task(register_loop("lb:9092", "0.0.0.0:9190", 10, stop))
    ...
    stop.set(); await task

``my_addr`` may have an unspecified host (``0.0.0.0:9190``): the LB substitutes
the address the heartbeat came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from fnlb.logs import kv
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["register_loop"]

log = logging.getLogger(__name__)

_RETRY_MIN_S = 0.5


async def register_loop(lb_addr: str, my_addr: str, ttl_s: float,
                        stop_event: asyncio.Event, *,
                        credentials: grpc.ChannelCredentials | None = None) -> None:
    """Keep ``my_addr`` registered with the LB admin at ``lb_addr`` until ``stop_event``."""
    ttl = max(1, int(round(ttl_s)))
    period = ttl / 3
    channel = (grpc.aio.secure_channel(lb_addr, credentials) if credentials is not None
               else grpc.aio.insecure_channel(lb_addr))
    stub = lb_pb2_grpc.AdminStub(channel)
    registered = False
    failing = False
    retry = _RETRY_MIN_S
    try:
        while not stop_event.is_set():
            try:
                resp = await stub.AddRunner(
                    lb_pb2.AddRunnerRequest(address=my_addr, ttl_s=ttl), timeout=period)
            except grpc.aio.AioRpcError as e:
                if not failing:
                    log.warning("registration failed, retrying", extra=kv(
                        lb=lb_addr, code=e.code().name, error=e.details()))
                failing = True
                wait = min(retry, period)
                retry = min(retry * 2, period)
            else:
                if failing or not registered or resp.added:
                    log.info("registered with LB", extra=kv(
                        lb=lb_addr, addr=my_addr, ttl_s=ttl, added=resp.added))
                registered, failing, retry = True, False, _RETRY_MIN_S
                wait = period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), wait)
        if registered:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address=my_addr),
                                        timeout=2)
                log.info("deregistered from LB", extra=kv(lb=lb_addr, addr=my_addr))
    finally:
        await channel.close(grace=None)
