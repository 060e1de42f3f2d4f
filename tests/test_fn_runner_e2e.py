"""fnlb in front of fn runners: the LB places on an fn-protocol runner double
(tests/fn_double, /RunnerProtocol/Engage + Status, its own process) with every
placer, retries its NACKs elsewhere, keeps fn's commit rule, speaks mTLS to it,
mixes it with runner-stubs, and learns which protocol each runner speaks."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fnlb.harness import Proc, running, wait_until
from fnlb.tls import init_ca, issue_cert
from fnlb.v1 import lb_pb2, lb_pb2_grpc

pytestmark = pytest.mark.slow

DOUBLE = "tests.fn_double"


@contextlib.contextmanager
def fn_double(*args: str) -> Iterator[Proc]:
    with running(DOUBLE, ["--listen", "127.0.0.1:0", *args], name="fn-double") as p:
        yield p


@contextlib.contextmanager
def lb(runners: list[str], *args: str) -> Iterator[Proc]:
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                          "--admin-listen", "127.0.0.1:0", "--runners", ",".join(runners),
                          "--placer-timeout", "5s", *args]) as p:
        yield p


def started(proc: Proc) -> list[dict[str, str]]:
    """The calls the double ran (its ``msg=call_started`` lines)."""
    from fnlb.harness import parse_logfmt

    return [parse_logfmt(line) for line in proc.read_lines() if "msg=call_started" in line]


def nacks(proc: Proc) -> int:
    return sum("msg=nack" in line for line in proc.read_lines())


async def settled(count: Callable[[], int], n: int) -> None:
    """Wait until the doubles' logs show ``n`` events: a line may reach us after
    the response it preceded."""
    await wait_until(lambda: count() >= n, within=10, what=f"{n} logged events")


async def invoke(addr: str, n: int, concurrency: int, *, fn_id: str = "echo",
                 body: bytes = b"hello", **config: str
                 ) -> tuple[list[lb_pb2.InvokeResponse], list[grpc.aio.AioRpcError]]:
    """``n`` calls, ``concurrency`` at a time: (responses, errors)."""
    ok: list[lb_pb2.InvokeResponse] = []
    errors: list[grpc.aio.AioRpcError] = []
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = lb_pb2_grpc.LoadBalancerStub(ch)

        async def one(i: int) -> None:
            async with sem:
                try:
                    ok.append(await stub.Invoke(lb_pb2.InvokeRequest(
                        fn_id=fn_id if fn_id != "each" else f"f{i}", body=body + b"%d" % i,
                        config=config), timeout=20))
                except grpc.aio.AioRpcError as e:
                    errors.append(e)

        await asyncio.gather(*(one(i) for i in range(n)))
    return ok, errors


async def list_runners(lb_proc: Proc) -> list[lb_pb2.RunnerInfo]:
    async with grpc.aio.insecure_channel(lb_proc.fields["admin_addr"]) as ch:
        resp = await lb_pb2_grpc.AdminStub(ch).ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
    return list(resp.runners)


@pytest.mark.parametrize("placer", ["naive", "ch", "p2c", "chbl", "warm"])
async def test_every_placer_places_on_fn_runners(placer: str) -> None:
    with fn_double("--slots", "4") as a, fn_double("--slots", "4") as b, \
            lb([f"fn://{a.addr}", f"fn://{b.addr}"], "--placer", placer) as front:
        ok, errors = await invoke(front.addr, 40, 8, fn_id="each")
        assert not errors, errors[:3]
        assert len(ok) == 40
        assert all(r.status_code == 200 and r.body.startswith(b"hello") for r in ok)
        assert {r.runner for r in ok} <= {f"fn://{a.addr}", f"fn://{b.addr}"}
        # Each call ran exactly once, on the runner the response names.
        await settled(lambda: len(started(a)) + len(started(b)), 40)
        ran = Counter(c["call_id"] for c in started(a) + started(b))
        assert sorted(ran.values()) == [1] * 40
        assert {r.call_id for r in ok} == set(ran)


async def test_nacks_go_elsewhere_and_are_never_run() -> None:
    # `busy` has no slot: every call gets fn's NACK, finished{success=false, errorCode=503}.
    with fn_double("--slots", "0") as busy, fn_double("--slots", "8") as free, \
            lb([busy.addr, free.addr], "--runner-protocol", "fn") as front:
        ok, errors = await invoke(front.addr, 30, 4)
        assert not errors, errors[:3]
        assert {r.runner for r in ok} == {free.addr}
        await settled(lambda: len(started(free)), 30)
        assert len(started(free)) == 30 and not started(busy)
        assert nacks(busy) > 0
        assert max(r.attempts for r in ok) >= 2


async def test_nack_and_hang_up_under_a_burst_gives_no_client_error() -> None:
    # fn's pure runner returns from Engage right after the NACK, without reading
    # the body: the LB must still read the NACK and try elsewhere (issue 15:
    # before, "Internal error from Core" counted as committed).
    with fn_double("--slots", "0", "--nack-hangup") as hangup, \
            fn_double("--slots", "16", "--sleep-ms", "5") as free, \
            lb([hangup.addr, free.addr], "--runner-protocol", "fn",
               "--placer", "naive", "--queue", "off") as front:
        # --queue off: fn's sweep, so the hang-up runner is tried again and again
        # (with the queue the LB learns from its first NACK that it has no room).
        for body in (b"s", b"b" * 300_000):  # inline writes, and a sender task
            before = nacks(hangup)
            ok, errors = await invoke(front.addr, 200, 64, body=body)
            assert not errors, Counter(f"{e.code().name}: {e.details()}" for e in errors)
            assert len(ok) == 200 and {r.runner for r in ok} == {free.addr}
            await settled(lambda: nacks(hangup), before + 50)  # the refusals really happened


async def test_crash_after_commit_is_an_error_and_never_rerun() -> None:
    with fn_double("--slots", "4", "--crash-after-commit") as crash, \
            fn_double("--slots", "4") as good, \
            lb([f"fn://{crash.addr}", f"fn://{good.addr}"], "--placer", "naive") as front:
        ok, errors = await invoke(front.addr, 8, 1, fn_id="each")
        crash.wait(10)
        crash.wait_for_line("msg=crashing")
        await settled(lambda: len(started(good)), len(ok))
        # The call that reached the crashing runner fails; the others ran on `good`.
        crashed = [c["fn_id"] for c in started(crash)]
        assert len(crashed) == 1 and len(errors) == 1, (crashed, errors)
        e = errors[0]
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert f"fn://{crash.addr}" in (e.details() or "")
        # ... and was never run again elsewhere (at most once after commit).
        assert crashed[0] not in {c["fn_id"] for c in started(good)}
        assert len(ok) == 7 and len(started(good)) == 7


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d / "ca")
    for name in ("runner", "lb"):
        issue_cert(d / "ca", name, ["127.0.0.1"], d)
    return d


def tls_args(pki: Path, name: str) -> list[str]:
    return ["--tls-cert", str(pki / f"{name}.crt"), "--tls-key", str(pki / f"{name}.key"),
            "--tls-ca", str(pki / "ca" / "ca.crt")]


async def test_mtls_to_an_fn_runner(pki: Path) -> None:
    with fn_double("--slots", "4", *tls_args(pki, "runner")) as runner, \
            lb([runner.addr], *tls_args(pki, "lb")) as front:
        ok, errors = await invoke(front.addr, 10, 4)
        assert not errors, errors[:3]
        assert {r.runner for r in ok} == {runner.addr}
        # "auto" learned fn's protocol over mTLS.
        assert [r.protocol for r in await list_runners(front)] == ["fn"]
    # Without a client certificate the double refuses: it really is mTLS only.
    with fn_double("--slots", "4", *tls_args(pki, "runner")) as runner, \
            lb([runner.addr], "--placer-timeout", "1s") as front:
        _, errors = await invoke(front.addr, 1, 1)
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE


async def test_mixed_pool_under_load() -> None:
    with running("runner_stub", ["--listen", "127.0.0.1:0", "--slots", "8"]) as s1, \
            running("runner_stub", ["--listen", "127.0.0.1:0", "--slots", "8"]) as s2, \
            fn_double("--slots", "8", "--sleep-ms", "2") as fn, \
            lb([s1.addr, s2.addr, fn.addr], "--placer", "p2c") as front:
        n = 600
        ok, errors = await invoke(front.addr, n, 48, sleep_ms="2")
        assert not errors, Counter(f"{e.code().name}: {e.details()}" for e in errors)
        by_runner = Counter(r.runner for r in ok)
        assert set(by_runner) == {s1.addr, s2.addr, fn.addr}, by_runner
        await settled(lambda: len(started(fn)), by_runner[fn.addr])
        assert by_runner[fn.addr] == len(started(fn))
        attempts = sum(r.attempts for r in ok) / len(ok)
        print(f"\nmixed pool: calls={n} errors={len(errors)} attempts/call={attempts:.3f} "
              f"stubs={by_runner[s1.addr]}+{by_runner[s2.addr]} fn={by_runner[fn.addr]} "
              f"fn NACKs={nacks(fn)}")
        protocols = {r.address: r.protocol for r in await list_runners(front)}
        assert protocols == {s1.addr: "fnlb", s2.addr: "fnlb", fn.addr: "fn"}


async def test_auto_detection_override_and_fnlb_runners_cli() -> None:
    with running("runner_stub", ["--listen", "127.0.0.1:0"]) as stub, \
            fn_double("--slots", "4") as auto_fn, fn_double("--slots", "4") as named_fn, \
            lb([stub.addr, auto_fn.addr], "--runner-protocol", "auto") as front:
        admin = front.fields["admin_addr"]
        # Admin AddRunner takes the fn:// override too.
        add = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "fnlb", "runners", "--lb", admin, "--add",
                             f"fn://{named_fn.addr}"], capture_output=True, text=True, timeout=30)
        assert add.returncode == 0, add.stderr

        async def learned() -> bool:
            return all(r.protocol for r in await list_runners(front))
        await wait_until(learned, within=15)
        protocols = {r.address: r.protocol for r in await list_runners(front)}
        assert protocols == {stub.addr: "fnlb", auto_fn.addr: "fn",
                             f"fn://{named_fn.addr}": "fn"}
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "fnlb", "runners", "--lb", admin],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        col = lines[0].split().index("PROTOCOL")
        rows = {line.split()[0]: line.split()[col] for line in lines[1:-1]}
        assert rows == {stub.addr: "fnlb", auto_fn.addr: "fn", f"fn://{named_fn.addr}": "fn"}
        ok, errors = await invoke(front.addr, 30, 6)
        assert not errors and len(ok) == 30
        await settled(lambda: len(started(auto_fn)),
                      sum(r.runner == auto_fn.addr for r in ok))

        # Draining an fn runner is the LB's alone (fn has no Close): no new calls there.
        async with grpc.aio.insecure_channel(admin) as ch:
            await lb_pb2_grpc.AdminStub(ch).DrainRunner(
                lb_pb2.DrainRunnerRequest(address=auto_fn.addr), timeout=10)
        before = len(started(auto_fn))
        ok, errors = await invoke(front.addr, 30, 6)
        assert not errors and auto_fn.addr not in {r.runner for r in ok}
        assert len(started(auto_fn)) == before


async def test_forced_protocols() -> None:
    # --runner-protocol fnlb, and an fn runner named fn:// among fnlb runners.
    with running("runner_stub", ["--listen", "127.0.0.1:0"]) as stub, \
            fn_double("--slots", "4") as fn, \
            lb([stub.addr, f"fn://{fn.addr}"], "--runner-protocol", "fnlb",
               "--placer", "naive") as front:
        ok, errors = await invoke(front.addr, 20, 4)
        assert not errors
        assert {r.runner for r in ok} == {stub.addr, f"fn://{fn.addr}"}
    # fnlb:// forces fnlb.v1 on an fn runner: it cannot serve it, and nothing runs there.
    with fn_double("--slots", "4") as fn, \
            lb([f"fnlb://{fn.addr}"], "--placer-timeout", "1s") as front:
        _, errors = await invoke(front.addr, 1, 1)
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        assert not started(fn)


async def test_protocol_is_learned_again_when_the_runner_changes(fixed_port: int) -> None:
    # An fnlb runner-stub is replaced by an fn runner at the same address: "auto"
    # follows it (re-learned after the reconnect) and calls run there.
    addr = f"127.0.0.1:{fixed_port}"
    with lb([addr], "--runner-protocol", "auto", "--placer-timeout", "3s") as front:
        with running("runner_stub", ["--listen", addr]):
            ok, errors = await invoke(front.addr, 5, 1)
            assert not errors and {r.runner for r in ok} == {addr}
            assert [r.protocol for r in await list_runners(front)] == ["fnlb"]
        with fn_double("--slots", "4", "--listen", addr) as fn:

            async def fn_learned() -> bool:
                return [r.protocol for r in await list_runners(front)] == ["fn"]
            await wait_until(fn_learned, within=20)
            ok, errors = await invoke(front.addr, 10, 2)
            assert not errors and {r.runner for r in ok} == {addr}
            await settled(lambda: len(started(fn)), 10)
            assert len(started(fn)) == 10
