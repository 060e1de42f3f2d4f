"""Hung and cut-off runners through the LB: real `fnlb serve` and `runner-stub` processes.

The stubs list "ack" and "keepalive". A call the LB placed on a stopped
(SIGSTOP) or cut-off runner but saw no acknowledgement for goes to another
runner (accept deadline, 1 s; the channel's keepalive breaks within ~2 s); it
never runs twice, also not once the runner is continued (checked from every
stub's own "function started" log lines); a call fails only if that runner had
accepted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import pytest

from fnlb.calls import LBCall
from fnlb.errors import RunnerError
from fnlb.harness import Proc, parse_logfmt, running, running_stubs, wait_until
from fnlb.runnerpool import CallModel
from fnlb.transport import GrpcRunner
from fnlb.v1 import lb_pb2, lb_pb2_grpc

pytestmark = pytest.mark.slow

CLIENTS = 6


class Proxy:
    """A TCP forwarder in front of one runner that can cut the way back.

    With ``drop_to_lb`` set, the runner's bytes are thrown away (its acks,
    replies, pings answers) and no close reaches the runner: to the LB the
    runner went silent, to the runner the LB is still there. What a one-way
    partition does, without root.
    """

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.drop_to_lb = False
        self.addr = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        for pipe in (self._pipe(reader, up_writer, lambda: False),
                     self._pipe(up_reader, writer, lambda: self.drop_to_lb)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    dropping: Callable[[], bool]) -> None:
        try:
            while data := await reader.read(65536):
                if not dropping():
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not self.drop_to_lb:
                writer.close()


def slow_call(call_id: str) -> LBCall:
    return LBCall(CallModel(id=call_id, fn_id="slow", config={"sleep_ms": "60000"},
                            timeout=120), b"")


def logged_ids(stub: Proc, msg: str) -> list[str]:
    """Call ids of every ``msg`` line the stub logged (debug level): "function
    started", or "call accepted" (a slot taken; acknowledged next, if not cancelled)."""
    return logged_ids_from(stub, msg, 0)


def logged_ids_from(stub: Proc, msg: str, start: int) -> list[str]:
    return [parse_logfmt(line)["call_id"] for line in stub.read_lines(start)
            if f'msg="{msg}"' in line]


@contextlib.contextmanager
def stopped(proc: Proc) -> Iterator[None]:
    """SIGSTOP ``proc``; SIGCONT it on the way out, whatever happens."""
    proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal(signal.SIGCONT)


def keepalive_dialled(front: Proc) -> set[str]:
    return {parse_logfmt(line)["runner"] for line in front.read_lines()
            if ('msg="re-dialled runner"' in line or 'msg="runner allows keepalive pings"' in line)
            and "keepalive=1s" in line}


def taken_back(front: Proc, runner: str) -> bool:
    """The LB logged that a call it had placed on ``runner`` was not placed after all."""
    return any(runner in line and ("no answer to the try within" in line
                                   or "before it acknowledged" in line)
               for line in front.read_lines())


async def test_calls_on_a_stopped_ack_runner_go_elsewhere_and_never_run_twice() -> None:
    stub_args = ["--slots", "8", "--log-level", "debug"]
    with running_stubs(3, stub_args) as stubs, running("fnlb", [
            "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--runners", ",".join(s.addr for s in stubs),
            "--placer", "naive", "--drain-grace", "5s"]) as front:
        hung = stubs[0]
        # call id -> (ok, runner or error, attempts, seconds)
        outcomes: dict[str, tuple[bool, str, int, float]] = {}
        stop = asyncio.Event()

        async def client(ch: grpc.aio.Channel, n: int) -> None:
            lb = lb_pb2_grpc.LoadBalancerStub(ch)
            i = 0
            while not stop.is_set():
                i += 1
                t0 = time.monotonic()
                call_id = f"c{n}-{i}"
                req = lb_pb2.InvokeRequest(fn_id="echo", body=b"x", call_id=call_id)
                try:
                    resp = await lb.Invoke(req, timeout=15)
                    outcomes[call_id] = (True, resp.runner, resp.attempts, time.monotonic() - t0)
                except grpc.aio.AioRpcError as e:
                    outcomes[call_id] = (False, f"{e.code().name}: {e.details()}", 0,
                                         time.monotonic() - t0)

        # A call of our own on the runner over a keepalive channel, as the LB's.
        watcher = GrpcRunner(hung.addr)
        async with grpc.aio.insecure_channel(front.addr) as ch:
            clients = [asyncio.create_task(client(ch, n)) for n in range(CLIENTS)]
            try:
                # The LB has polled every runner's features (its channel pings every
                # second; it asks for acks from then on), and all answer calls.
                await wait_until(lambda: keepalive_dialled(front) >= {s.addr for s in stubs},
                                 within=30, what="keepalive channels to every runner")
                await wait_until(lambda: {o[1] for o in outcomes.values() if o[0]}
                                 >= {s.addr for s in stubs}, within=30, what="all runners used")
                await watcher.refresh()
                assert watcher.keepalive and watcher.acks
                watched = asyncio.create_task(watcher.try_exec(slow_call("watched")))
                await asyncio.to_thread(hung.wait_for_line,
                                        'msg="function started" call_id=watched')
                with stopped(hung):
                    before = set(outcomes)
                    # naive sends calls to the first runner first: some land on
                    # the stopped one, get no ack, and are taken back.
                    await wait_until(lambda: taken_back(front, hung.addr), within=30,
                                     what="a call taken back from the stopped runner")
                    seen = len(outcomes)
                    await wait_until(lambda: len(outcomes) > seen + 200, within=60,
                                     what="200 more calls answered")
                    # Stopped until our own keepalive channel to it broke too
                    # (the LB's has the same options): what the LB had sent
                    # there waits in its socket when it continues.
                    lost = await asyncio.wait_for(watched, 30)
                    assert isinstance(lost.error, RunnerError) and lost.error.lost, lost
                    stop.set()
                    await asyncio.gather(*clients)
            finally:
                stop.set()
                await asyncio.gather(*clients, return_exceptions=True)
                await watcher.close()
            during = {cid: o for cid, o in outcomes.items() if cid not in before}
        # Continued: whatever it had read while stopped must not start now. Its
        # exit (drained) is when every line it will ever log is in.
        hung.stop(timeout=20)

        runs = Counter(cid for s in stubs for cid in logged_ids(s, "function started"))
        twice = {cid: n for cid, n in runs.items() if n > 1}
        assert not twice, f"calls run more than once: {twice}"
        failed = {cid: o for cid, o in outcomes.items() if not o[0]}
        # Only a call the hung runner had accepted (and, for the LB to commit
        # it, acknowledged) may fail: it is lost with the runner's connection.
        assert set(failed) <= set(logged_ids(hung, "call accepted")), failed
        assert len(failed) <= CLIENTS
        retried = [cid for cid, o in during.items() if o[0] and o[2] > 1 and o[1] != hung.addr]
        assert retried, "no call was tried on the stopped runner and then elsewhere"
        slowest = max(o[3] for o in during.values())
        print(f"calls during the stop: {len(during)}, retried elsewhere: {len(retried)}, "
              f"failed: {len(failed)}, slowest: {slowest:.2f}s")


async def test_calls_on_a_runner_cut_off_from_the_lb_go_elsewhere_and_never_run_twice() -> None:
    """The runner gets the tries but its acks never arrive: the dangerous case.

    It has accepted those calls; had it started them on acknowledging (no go),
    each would also run where the LB sends it next.
    """
    stub_args = ["--slots", "8", "--log-level", "debug"]
    with running_stubs(3, stub_args) as stubs:
        cut = stubs[0]
        async with Proxy(cut.addr) as proxy:
            with running("fnlb", [
                    "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                    "--admin-listen", "127.0.0.1:0",
                    "--runners", ",".join([proxy.addr, stubs[1].addr, stubs[2].addr]),
                    "--placer", "naive", "--drain-grace", "5s"]) as front:
                outcomes: dict[str, tuple[bool, str]] = {}
                stop = asyncio.Event()

                async def client(ch: grpc.aio.Channel, n: int) -> None:
                    lb = lb_pb2_grpc.LoadBalancerStub(ch)
                    i = 0
                    while not stop.is_set():
                        i += 1
                        call_id = f"c{n}-{i}"
                        req = lb_pb2.InvokeRequest(fn_id="echo", body=b"x", call_id=call_id)
                        try:
                            resp = await lb.Invoke(req, timeout=15)
                            outcomes[call_id] = (True, resp.runner)
                        except grpc.aio.AioRpcError as e:
                            outcomes[call_id] = (False, f"{e.code().name}: {e.details()}")

                async with grpc.aio.insecure_channel(front.addr) as ch:
                    clients = [asyncio.create_task(client(ch, n)) for n in range(CLIENTS)]
                    try:
                        await wait_until(lambda: proxy.addr in keepalive_dialled(front),
                                         within=30, what="a keepalive channel to the runner")
                        await wait_until(lambda: proxy.addr in {o[1] for o in outcomes.values()},
                                         within=30, what="a call on the runner")
                        proxy.drop_to_lb = True
                        cut_from = len(cut.read_lines())
                        await wait_until(lambda: taken_back(front, proxy.addr), within=30,
                                         what="a call taken back from the cut-off runner")
                        seen = len(outcomes)
                        await wait_until(lambda: len(outcomes) > seen + 200, within=60,
                                         what="200 more calls answered")
                    finally:
                        stop.set()
                        await asyncio.gather(*clients, return_exceptions=True)
            # The runner never heard of the LB giving up: its acked calls wait
            # for a go that never comes. Its exit ends its log.
            cut.stop(timeout=20, drain=False)

        accepted_cut_off = set(logged_ids_from(cut, "call accepted", cut_from))
        done_elsewhere = {cid for cid, o in outcomes.items() if o[0] and o[1] != proxy.addr}
        assert accepted_cut_off & done_elsewhere, "no accepted call was taken back"
        runs = Counter(cid for s in stubs for cid in logged_ids(s, "function started"))
        twice = {cid: n for cid, n in runs.items() if n > 1}
        assert not twice, f"calls run more than once: {twice}"
        failed = {cid: o for cid, o in outcomes.items() if not o[0]}
        assert set(failed) <= set(logged_ids(cut, "call accepted")), failed
        print(f"accepted by the cut-off runner and run elsewhere: "
              f"{len(accepted_cut_off & done_elsewhere)}, failed: {len(failed)}")
