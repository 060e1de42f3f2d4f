"""Small clients behind ``fnlb invoke`` and ``fnlb runners``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from fnlb.phases import ATTEMPTS_TRAILER, PHASES_TRAILER, TRACE_HEADER, parse_phases
from fnlb.v1 import lb_pb2, lb_pb2_grpc

__all__ = ["open_channel", "invoke", "list_runners", "format_runners", "format_trace"]

_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]


def open_channel(address: str, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> grpc.aio.Channel:
    """Plaintext unless a CA is given; a client certificate when cert and key are."""
    if not ca:
        return grpc.aio.insecure_channel(address, options=_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None)
    return grpc.aio.secure_channel(address, creds, options=_OPTIONS)


async def invoke(args: argparse.Namespace, data: bytes, config: dict[str, str]) -> int:
    req = lb_pb2.InvokeRequest(
        fn_id=args.fn_id, app_id=args.app_id, image=getattr(args, "image", ""), body=data,
        config=config,
        memory_mb=args.memory_mb, type=lb_pb2.DETACHED if args.detached else lb_pb2.SYNC)
    verbose = getattr(args, "verbose", False)
    metadata = ((TRACE_HEADER, "1"),) if verbose else None
    async with open_channel(args.lb, args.tls_ca, args.tls_cert, args.tls_key) as ch:
        stub = lb_pb2_grpc.LoadBalancerStub(ch)
        try:
            rpc = stub.Invoke(req, timeout=args.timeout, metadata=metadata)
            resp = await rpc
            trailers = await rpc.trailing_metadata()
        except grpc.aio.AioRpcError as e:
            print(f"fnlb invoke: {e.code().name}: {e.details()}", file=sys.stderr)
            if verbose:
                print(format_trace(e.trailing_metadata()), file=sys.stderr)
            return 1
    sys.stdout.buffer.write(resp.body)
    sys.stdout.flush()
    print(f"status={resp.status_code} runner={resp.runner} call_id={resp.call_id} "
          f"attempts={resp.attempts}", file=sys.stderr)
    if verbose:
        print(format_trace(trailers), file=sys.stderr)
    return 0 if 200 <= resp.status_code < 300 else 3


def format_trace(trailers: Sequence[tuple[str, str | bytes]] | None) -> str:
    """``fnlb invoke -v``'s report: the trace trailers as sent, then the phases as a table.

    fnlb-attempts: 127.0.0.1:9191 nack 0.9ms, 127.0.0.1:9190 committed 602.4ms
    fnlb-phases: queue=0.0, placement=1.3, ..., total=603.9
    phase          ms  share
    placement     1.3   0.2%
    ...
    """
    found = {k: v if isinstance(v, str) else v.decode() for k, v in trailers or ()
             if k in (ATTEMPTS_TRAILER, PHASES_TRAILER)}
    if not found:
        return "no trace trailers (an LB before fnlb-trace, or the call never reached it)"
    lines = [f"{k}: {found[k]}" for k in (ATTEMPTS_TRAILER, PHASES_TRAILER) if k in found]
    phases = parse_phases(found.get(PHASES_TRAILER, ""))
    total = phases.pop("total", 0.0)
    if phases:
        lines.append(f"{'phase':<12} {'ms':>9}  share")
        for name, ms in phases.items():
            share = f"{ms / total:6.1%}" if total > 0 else "     -"
            lines.append(f"{name:<12} {ms:9.1f} {share}")
        lines.append(f"{'total':<12} {total:9.1f}")
    return "\n".join(lines)


async def list_runners(args: argparse.Namespace) -> int:
    """``fnlb runners``: apply --add/--remove/--drain if given, then print the pool."""
    async with open_channel(args.lb, args.tls_ca, args.tls_cert, args.tls_key) as ch:
        stub = lb_pb2_grpc.AdminStub(ch)
        try:
            if getattr(args, "add", None):
                added = await stub.AddRunner(lb_pb2.AddRunnerRequest(address=args.add), timeout=10)
                print(f"{args.add}: {'added' if added.added else 'already in the pool'}")
            elif getattr(args, "remove", None):
                await stub.RemoveRunner(lb_pb2.RemoveRunnerRequest(address=args.remove),
                                        timeout=10)
                print(f"{args.remove}: removed")
            elif getattr(args, "drain", None):
                await stub.DrainRunner(lb_pb2.DrainRunnerRequest(address=args.drain), timeout=30)
                print(f"{args.drain}: draining")
            resp = await stub.ListRunners(lb_pb2.ListRunnersRequest(), timeout=10)
        except grpc.aio.AioRpcError as e:
            print(f"fnlb runners: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(format_runners(resp))
    return 0


def format_runners(resp: lb_pb2.ListRunnersResponse) -> str:
    """The pool as an aligned text table, one runner per line."""
    rows = [("ADDRESS", "STATE", "INFLIGHT", "ACTIVE", "SLOTS", "PLACED", "FAILS", "SOURCE",
             "PROTOCOL", "LAST STATUS", "LAST ERROR")]
    for r in resp.runners:
        # SLOTS "-": capacity unknown (e.g. an fn runner, whose Status has no slots).
        slots = f"{r.slots_free}/{r.slots_total}" if r.slots_total else "-"
        rows.append((r.address, r.state, str(r.inflight), str(r.runner_active), slots,
                     str(r.placed), str(r.consecutive_failures), r.source,
                     r.protocol or "-", r.last_status_at or "-", r.last_error[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.append(f"{len(resp.runners)} runners; placer: {resp.placer}")
    return "\n".join(lines)
