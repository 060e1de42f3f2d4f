"""An fn pure runner as the LB sees it: ``/RunnerProtocol/Engage`` and ``/Status``.

Written from fn's proto facts (fn_runner.proto here, no package), compiled
with grpc_tools.protoc into a temporary folder at start, and always run as
its own process (``python -m tests.fn_double``), so its top-level message
names never meet fnlb's in one descriptor pool.

Behaviour (fn's pure runner, api/agent/pure_runner.go): a call needs a free
slot; without one the runner answers ``finished{success=false, errorCode=503}``
first (the NACK). With a slot it reads the body, echoes it back
(``result_start`` 200, ``data``, ``finished{success}``). Flags:

    --slots N            calls at once (default 2)
    --sleep-ms N         hold each call this long (also config ``sleep_ms``)
    --nack-hangup        after a NACK, end the stream at once without reading
                         the body (fn's runner returns from Engage)
    --crash-after-commit exit the process after ``result_start`` of a call
    --quiet              no line per call (``make bench``: the runner stub logs none)
    --tls-cert/--tls-key/--tls-ca  serve mutual TLS only

Logs ``msg=listening addr=HOST:PORT`` once serving, ``msg=call_started
call_id=… fn_id=…`` for every call it runs and ``msg=nack`` for every NACK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).parent


def _compile(out: str) -> tuple[Any, Any]:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(HERE / "fn_runner.proto")])
    if rc != 0:
        raise SystemExit(f"fn_double: protoc failed ({rc})")
    sys.path.insert(0, out)
    return importlib.import_module("fn_runner_pb2"), importlib.import_module("fn_runner_pb2_grpc")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


QUIET = False  # --quiet: no call_started / nack lines


def log(msg: str, **kv: object) -> None:
    if QUIET and msg in ("call_started", "nack"):
        return
    fields = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"msg={msg} {fields}".rstrip(), flush=True)


def build(pb: Any, pb_grpc: Any, args: argparse.Namespace) -> Any:
    class Runner(pb_grpc.RunnerProtocolServicer):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.active = 0
            self.received = 0
            self.handled = 0

        def _nack(self) -> Any:
            return pb.RunnerMsg(finished=pb.CallFinished(
                success=False, errorCode=503, errorStr="Timed out - server too busy"))

        async def Engage(self, request_iterator: Any, context: Any) -> Any:
            first = await context.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "try":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected a try")
            self.received += 1
            call = json.loads(first.__getattribute__("try").models_call_json or "{}")
            if self.active >= args.slots:
                log("nack", call_id=call.get("id", ""))
                await context.write(self._nack())
                if args.nack_hangup:
                    return  # the body is never read, as fn's runner does
                while (msg := await context.read()) is not grpc.aio.EOF:
                    if msg.WhichOneof("body") == "data" and msg.data.eof:
                        break
                return
            self.active += 1
            try:
                created = _now()
                body = bytearray()
                while (msg := await context.read()) is not grpc.aio.EOF:
                    if msg.WhichOneof("body") == "data":
                        body += msg.data.data
                        if msg.data.eof:
                            break
                log("call_started", call_id=call.get("id", ""), fn_id=call.get("fn_id", ""))
                started = _now()
                t0 = time.monotonic_ns()
                sleep_ms = int((call.get("config") or {}).get("sleep_ms", args.sleep_ms))
                await context.write(pb.RunnerMsg(result_start=pb.CallResultStart(
                    http=pb.HttpRespMeta(status_code=200, headers=[
                        pb.HttpHeader(key="Content-Type", value="application/octet-stream")]))))
                if args.crash_after_commit:
                    log("crashing", call_id=call.get("id", ""))
                    os._exit(3)
                if sleep_ms:
                    await asyncio.sleep(sleep_ms / 1000)
                await context.write(pb.RunnerMsg(data=pb.DataFrame(data=bytes(body), eof=True)))
                await context.write(pb.RunnerMsg(finished=pb.CallFinished(
                    success=True, details=call.get("id", ""), createdAt=created,
                    startedAt=started, completedAt=_now(),
                    executionDuration=time.monotonic_ns() - t0)))
                self.handled += 1
            finally:
                self.active -= 1

        async def Status(self, request: Any, context: Any) -> Any:
            return pb.RunnerStatus(active=self.active, requestsReceived=self.received,
                                   requestsHandled=self.handled)

    return Runner()


def _server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())],
        root_certificates=Path(args.tls_ca).read_bytes(), require_client_auth=True)


async def serve(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fn_double_") as out:
        pb, pb_grpc = _compile(out)
        server = grpc.aio.server()
        pb_grpc.add_RunnerProtocolServicer_to_server(build(pb, pb_grpc, args), server)
        if args.tls_cert:
            port = server.add_secure_port(args.listen, _server_credentials(args))
        else:
            port = server.add_insecure_port(args.listen)
        await server.start()
        host = args.listen.rpartition(":")[0]
        log("listening", addr=f"{host}:{port}", slots=args.slots)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0.5)
        log("stopped")


def main() -> None:
    p = argparse.ArgumentParser(prog="fn_double")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--sleep-ms", type=int, default=0)
    p.add_argument("--nack-hangup", action="store_true")
    p.add_argument("--crash-after-commit", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-ca", default="")
    args = p.parse_args()
    global QUIET
    QUIET = args.quiet
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
