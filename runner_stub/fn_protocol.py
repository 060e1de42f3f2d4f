"""fn's ``RunnerProtocol`` service (no proto package) over the stub's ``fnlb.v1.Runner``.

fn's LB (``FN_NODE_TYPE=lb``, ``FN_RUNNER_ADDRESSES=host:port,...``) calls
``/RunnerProtocol/Engage`` and ``/RunnerProtocol/Status``; with this servicer
it can place calls on ``runner-stub``. Engage is TryExec through the same
code path (``RunnerService.exec_stream``), minus the acknowledgement: fn's
clients know no ack, so a ``try`` is served by fn's rule whatever its field 30
says. Status and Status2 are Runner/Status. ConfigureRunner is accepted and
logged. StreamLogs serves the per-call log lines (``call_logs``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import grpc

from fnlb.fn import runner_protocol_pb2 as fn_pb2
from fnlb.fn import runner_protocol_pb2_grpc as fn_pb2_grpc
from fnlb.logs import kv
from fnlb.v1 import runner_pb2
from runner_stub.call_logs import log_response

if TYPE_CHECKING:
    from runner_stub.server import RunnerService

__all__ = ["FN_SERVICE", "FnRunnerService"]

log = logging.getLogger("runner_stub")

FN_SERVICE = fn_pb2.DESCRIPTOR.services_by_name["RunnerProtocol"].full_name  # "RunnerProtocol"


def _shown(config: Any) -> str:
    """A config map as JSON for one log line, cut at 500 characters."""
    text = json.dumps(dict(sorted(config.items())))
    return text if len(text) <= 500 else text[:500] + "..."


class FnRunnerService(fn_pb2_grpc.RunnerProtocolServicer):
    """fn's method names for the calls a ``RunnerService`` serves."""

    def __init__(self, service: RunnerService) -> None:
        self._service = service

    async def Engage(self, request_iterator: Any, context: Any) -> None:
        await self._service.exec_stream(context, acks=False)

    async def Status(self, request: Any, context: Any) -> runner_pb2.RunnerStatus:
        return await self._service.Status(request, context)

    async def Status2(self, request: Any, context: Any) -> runner_pb2.RunnerStatus:
        # fn hands the struct to a status image; the stub runs none.
        return await self._service.Status(request, context)

    async def ConfigureRunner(self, request: fn_pb2.ConfigMsg,
                              context: Any) -> fn_pb2.ConfigStatus:
        log.info("configure runner (logged, not applied)",
                 extra=kv(peer=context.peer(), config=_shown(request.config)))
        return fn_pb2.ConfigStatus()

    async def StreamLogs(self, request_iterator: Any, context: Any) -> None:
        """fn's pull protocol: ``start``, then one batch per ``ack``/``ready``.

        A batch is every kept line the reader has not had yet (at most 500);
        when there is none, the answer waits for the next call to end. The
        first batch starts with the oldest line still kept.
        """
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("body") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "first message must be start")
        log.info("log stream started", extra=kv(peer=context.peer(),
                                                config=_shown(first.start.config)))
        logs = self._service.call_logs
        cursor = 0
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            if msg.WhichOneof("body") not in ("ack", "ready"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"expected ack or ready, got {msg.WhichOneof('body')}")
            lines = await logs.wait_after(cursor)
            cursor = lines[-1].seq
            await context.write(log_response(lines))
