"""A burst larger than gRPC core's pending-call limits reaches the front door's handler.

gRPC core keeps calls that arrived before the aio server asked for them (it asks
for one at a time) and, by default, drops them at random from 1,000 waiting and
all of them from 3,000: the client gets CANCELLED, the handler never runs, no
metric counts them. ``python -m bench.burst`` shows it with real processes;
this test makes the backlog certain by stalling the LB's event loop while the
calls arrive.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc

from fnlb.config import LBConfig
from fnlb.metrics import Metrics
from fnlb.pools.health import HealthConfig
from fnlb.server import LBServer
from fnlb.v1 import lb_pb2, lb_pb2_grpc
from tests.test_pools import FakeFactory

CALLS = 3500  # above core's default hard limit (3,000): some are dropped for sure


def _send_burst(address: str, sent: threading.Event,
                came_back: threading.Event) -> Counter[str]:
    """Start CALLS calls at once on one connection; the status code of each."""
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        stub = lb_pb2_grpc.LoadBalancerStub(ch)
        # fn_id missing: our handler answers INVALID_ARGUMENT, so each such
        # answer proves that the handler ran for that call.
        req = lb_pb2.InvokeRequest(fn_id="")
        futures = [stub.Invoke.future(req, timeout=60) for _ in range(CALLS)]
        for f in futures:
            f.add_done_callback(lambda _: came_back.set())
        sent.set()
        return Counter(f.code().name for f in futures)


def _stall(sent: threading.Event, came_back: threading.Event) -> None:
    """Block the event loop (the LB takes no call) until the burst was sent and
    one call came back, which can only be gRPC core dropping it, or 2 s passed."""
    assert sent.wait(30), "the client did not send its burst"
    came_back.wait(2)


async def test_every_call_of_a_burst_reaches_the_handler_while_the_loop_is_stalled() -> None:
    cfg = LBConfig(listen="127.0.0.1:0", metrics_listen="", admin_listen="",
                   runners=("127.0.0.1:9001",), health=HealthConfig(slow_start=0))
    async with LBServer(cfg, metrics=Metrics(), runner_factory=FakeFactory()) as lb:
        sent, came_back = threading.Event(), threading.Event()
        # run_in_executor starts the client thread now, before the stall.
        client = asyncio.get_running_loop().run_in_executor(
            None, _send_burst, lb.address, sent, came_back)
        _stall(sent, came_back)
        codes = await client
    assert codes == Counter({"INVALID_ARGUMENT": CALLS})
