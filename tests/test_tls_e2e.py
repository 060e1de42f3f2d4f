"""mTLS end to end: real LB and runner-stub processes with certificates minted by fnlb.tls."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from fnlb.harness import Proc, running, wait_until
from fnlb.tls import init_ca, issue_cert
from fnlb.v1 import lb_pb2, lb_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d / "ca")
    init_ca(d / "other-ca", name="someone-else")
    for name, sans in (("runner", ["127.0.0.1", "localhost"]), ("lb", ["127.0.0.1"]),
                       ("client", ["client"]), ("pinned", ["runner-a", "127.0.0.1"])):
        issue_cert(d / "ca", name, sans, d)
    issue_cert(d / "other-ca", "stranger", ["127.0.0.1"], d)
    past = datetime.now(UTC) - timedelta(days=10)
    issue_cert(d / "ca", "expired", ["127.0.0.1"], d, not_before=past,
               not_after=past + timedelta(days=1))
    return d


def stub_tls(pki: Path, name: str, ca: str = "ca") -> list[str]:
    return ["--tls-cert", str(pki / f"{name}.crt"), "--tls-key", str(pki / f"{name}.key"),
            "--tls-ca", str(pki / ca / "ca.crt")]


def lb_tls(pki: Path, name: str = "lb") -> list[str]:
    return stub_tls(pki, name)


@contextlib.contextmanager
def stub(pki: Path, name: str = "runner", ca: str = "ca") -> Iterator[Proc]:
    with running("runner_stub", ["--listen", "127.0.0.1:0", *stub_tls(pki, name, ca)]) as p:
        yield p


@contextlib.contextmanager
def lb(runners: list[str], *args: str) -> Iterator[Proc]:
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                          "--admin-listen", "127.0.0.1:0", "--runners", ",".join(runners),
                          "--placer-timeout", "1s", *args]) as p:
        yield p


def client_channel(pki: Path, addr: str, cert: str | None = "client") -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca" / "ca.crt").read_bytes(),
        private_key=(pki / f"{cert}.key").read_bytes() if cert else None,
        certificate_chain=(pki / f"{cert}.crt").read_bytes() if cert else None)
    return grpc.aio.secure_channel(addr, creds)


async def invoke(pki: Path, addr: str, n: int = 1) -> list[lb_pb2.InvokeResponse]:
    async with client_channel(pki, addr) as ch:
        stub_ = lb_pb2_grpc.LoadBalancerStub(ch)
        return [await stub_.Invoke(lb_pb2.InvokeRequest(fn_id=f"f{i}", body=b"sec"), timeout=10)
                for i in range(n)]


async def test_full_mtls_cluster_serves_calls(pki: Path) -> None:
    with stub(pki) as a, stub(pki) as b, lb([a.addr, b.addr], *lb_tls(pki),
                                            "--front-tls-cert", str(pki / "lb.crt"),
                                            "--front-tls-key", str(pki / "lb.key"),
                                            "--front-tls-ca", str(pki / "ca" / "ca.crt")) as front:
        assert "runner connections are plaintext" not in front.output()
        results = await invoke(pki, front.addr, 8)
        assert all(r.body == b"sec" for r in results)
        assert {r.runner for r in results} <= {a.addr, b.addr}
        # A client without a certificate is refused at the front door.
        async with client_channel(pki, front.addr, cert=None) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lb_pb2_grpc.LoadBalancerStub(ch).Invoke(
                    lb_pb2.InvokeRequest(fn_id="x"), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_runner_from_another_ca_is_refused_and_skipped(pki: Path) -> None:
    with stub(pki, "stranger", ca="other-ca") as bad, stub(pki) as good, \
            lb([bad.addr, good.addr], *lb_tls(pki)) as front:
        results = await invoke_plain(front.addr, 6)
        assert {r.runner for r in results} == {good.addr}
        front.wait_for_line(rf"runner unreachable.*runner={bad.addr}.*(?i:certificate|handshake)")


async def invoke_plain(addr: str, n: int) -> list[lb_pb2.InvokeResponse]:
    async with grpc.aio.insecure_channel(addr) as ch:
        s = lb_pb2_grpc.LoadBalancerStub(ch)
        return [await s.Invoke(lb_pb2.InvokeRequest(fn_id=f"f{i}"), timeout=10) for i in range(n)]


async def test_lb_without_client_cert_is_refused_by_runner(pki: Path) -> None:
    with stub(pki) as runner, lb([runner.addr]) as front:
        assert "runner connections are plaintext" in front.output()
        async with grpc.aio.insecure_channel(front.addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await lb_pb2_grpc.LoadBalancerStub(ch).Invoke(
                    lb_pb2.InvokeRequest(fn_id="x"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "too busy" in (e.value.details() or "")
        front.wait_for_line(rf"runner unreachable.*runner={runner.addr}")


async def test_san_pinning_refuses_runners_without_the_name(pki: Path) -> None:
    with stub(pki, "pinned") as a, stub(pki) as b, \
            lb([a.addr, b.addr], *lb_tls(pki), "--runner-server-name", "runner-a") as front:
        results = await invoke_plain(front.addr, 6)
        assert {r.runner for r in results} == {a.addr}
        # Out of placement once a probe or a call could not reach it, with why.
        front.wait_for_line(rf"runner unreachable.*runner={b.addr}")


@pytest.mark.parametrize("side", ["lb", "runner", "front"])
def test_expired_certificate_is_a_startup_error(pki: Path, side: str) -> None:
    if side == "runner":
        argv = ["runner_stub", "--listen", "127.0.0.1:0", *stub_tls(pki, "expired")]
    elif side == "lb":
        argv = ["fnlb", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                "--admin-listen", "", "--runners", "127.0.0.1:1", *lb_tls(pki, "expired")]
    else:
        argv = ["fnlb", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                "--admin-listen", "", "--runners", "127.0.0.1:1",
                "--front-tls-cert", str(pki / "expired.crt"),
                "--front-tls-key", str(pki / "expired.key")]
    r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "expired" in r.stderr and "expired.crt" in r.stderr


def test_mismatched_key_and_missing_file_are_startup_errors(pki: Path) -> None:
    base = [sys.executable, "-m", "fnlb", "serve", "--listen", "127.0.0.1:0",
            "--metrics-listen", "", "--admin-listen", "", "--runners", "127.0.0.1:1"]
    r = subprocess.run([*base, "--tls-cert", str(pki / "lb.crt"), "--tls-key",
                        str(pki / "runner.key"), "--tls-ca", str(pki / "ca" / "ca.crt")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "does not match" in r.stderr, r.stderr
    r = subprocess.run([*base, "--tls-cert", str(pki / "nope.crt"), "--tls-key",
                        str(pki / "lb.key"), "--tls-ca", str(pki / "ca" / "ca.crt")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "nope.crt" in r.stderr, r.stderr


def _served_serial(pki: Path, addr: str) -> int:
    """Serial of the certificate a runner serves to a *new* mTLS connection."""
    import socket
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.crt"))
    ctx.load_cert_chain(str(pki / "lb.crt"), str(pki / "lb.key"))
    ctx.set_alpn_protocols(["h2"])
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_runner_certificate_reload_fails_no_call(pki: Path, tmp_path: Path) -> None:
    import asyncio
    import os
    import shutil
    import signal

    live = tmp_path / "live"
    live.mkdir()
    for ext in ("crt", "key"):
        shutil.copy(pki / f"runner.{ext}", live / f"runner.{ext}")
    issue_cert(pki / "ca", "runner-next", ["127.0.0.1"], tmp_path)
    args = ["--listen", "127.0.0.1:0", "--tls-cert", str(live / "runner.crt"),
            "--tls-key", str(live / "runner.key"), "--tls-ca", str(pki / "ca" / "ca.crt")]
    with running("runner_stub", args) as runner, lb([runner.addr], *lb_tls(pki)) as front:
        old = _served_serial(pki, runner.addr)
        failures: list[BaseException] = []
        done = asyncio.Event()
        before = after = 0  # calls that completed before / started after the reload line
        reloaded = False

        async def load() -> None:
            nonlocal before, after
            async with grpc.aio.insecure_channel(front.addr) as ch:
                s = lb_pb2_grpc.LoadBalancerStub(ch)
                while not done.is_set():
                    started_after = reloaded
                    try:
                        r = await s.Invoke(lb_pb2.InvokeRequest(
                            fn_id="f", body=b"x", config={"sleep_ms": "20"}), timeout=10)
                        assert r.body == b"x"
                    except grpc.aio.AioRpcError as e:
                        failures.append(e)
                        continue
                    if started_after:
                        after += 1
                    else:
                        before += 1

        tasks = [asyncio.ensure_future(load()) for _ in range(4)]
        try:
            await wait_until(lambda: before >= 4, 10, "calls flowing before the rotation")
            # Rotate: atomic renames, as a cert manager would, then SIGHUP.
            start = len(runner.lines)
            for ext in ("key", "crt"):
                os.replace(shutil.copy(tmp_path / f"runner-next.{ext}", live / f"next.{ext}"),
                           live / f"runner.{ext}")
            runner.signal(signal.SIGHUP)
            # In a thread: the calls go on on this loop meanwhile.
            await asyncio.to_thread(runner.wait_for_line, "tls certificate reloaded", 20, start)
            reloaded = True
            # Calls keep flowing over the LB's existing connection: counted only
            # those started once the runner had logged the reload.
            await wait_until(lambda: after >= 20, 20, "calls after the reload")
        finally:
            done.set()
            await asyncio.gather(*tasks)
        new = await asyncio.to_thread(_served_serial, pki, runner.addr)
        assert new != old  # new connections get the new certificate
        assert failures == []


async def test_runner_registers_over_mtls_and_serves(pki: Path) -> None:
    front_tls = ["--front-tls-cert", str(pki / "lb.crt"), "--front-tls-key", str(pki / "lb.key"),
                 "--front-tls-ca", str(pki / "ca" / "ca.crt")]
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                          "--admin-listen", "127.0.0.1:0", "--discovery", "registration",
                          "--register-allow", "self",
                          "--placer-timeout", "5s", *lb_tls(pki), *front_tls]) as front, \
            running("runner_stub", ["--listen", "127.0.0.1:0", *stub_tls(pki, "runner"),
                                    "--register-with", front.fields["admin_addr"],
                                    "--register-ttl", "2s"]) as runner:
        runner.wait_for_line("registered with LB")
        results = await invoke(pki, front.addr, 2)
        assert {r.runner for r in results} == {runner.addr}


async def test_lb_redials_runners_when_its_client_certificate_changes(tmp_path: Path,
                                                                      fixed_port: int) -> None:
    """A CA rotation: the LB moves to a certificate of the new CA, then the runner drops
    the old CA and restarts. Without the re-dial, the LB's channel would reconnect with the
    old certificate and the runner would stay unreachable."""
    import os
    import shutil
    import time

    for ca in ("ca1", "ca2"):
        init_ca(tmp_path / ca, name=ca)
        issue_cert(tmp_path / ca, f"runner-{ca}", ["127.0.0.1"], tmp_path)
        issue_cert(tmp_path / ca, f"lb-{ca}", ["127.0.0.1"], tmp_path)
    both = tmp_path / "both-cas.crt"
    both.write_bytes((tmp_path / "ca1" / "ca.crt").read_bytes()
                     + (tmp_path / "ca2" / "ca.crt").read_bytes())
    live = tmp_path / "lb-live"
    live.mkdir()
    for ext in ("crt", "key"):
        shutil.copy(tmp_path / f"lb-ca1.{ext}", live / f"lb.{ext}")
    # The runner restarts at the same address, so a fixed port: reserved for the
    # whole test, no other process can take it while the runner is down.
    port = fixed_port

    def runner(cert: str, trust: Path) -> contextlib.AbstractContextManager[Proc]:
        return running("runner_stub", [
            "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tmp_path / f"{cert}.crt"),
            "--tls-key", str(tmp_path / f"{cert}.key"), "--tls-ca", str(trust)])

    # Polls at the default 2 s: the restart below misses at most one, so the
    # pool never parks (closes and re-creates) the runner, which would hide a
    # missing re-dial.
    lb_args = ["--tls-cert", str(live / "lb.crt"), "--tls-key", str(live / "lb.key"),
               "--tls-ca", str(both)]
    with lb([f"127.0.0.1:{port}"], *lb_args) as front:
        with runner("runner-ca1", both):
            assert (await invoke_plain(front.addr, 1))[0].status_code == 200
            # The LB's certificate moves to the new CA (atomic renames, no SIGHUP).
            for ext in ("key", "crt"):
                os.replace(shutil.copy(tmp_path / f"lb-ca2.{ext}", live / f"next.{ext}"),
                           live / f"lb.{ext}")
            front.wait_for_line("re-dialling runner with the new client certificate")
            assert (await invoke_plain(front.addr, 1))[0].status_code == 200
        # The runner comes back trusting only the new CA.
        with runner("runner-ca2", tmp_path / "ca2" / "ca.crt"):
            deadline = time.monotonic() + 15
            while True:  # until gRPC's reconnect back-off (<= 2 s) lets a call through
                try:
                    resp = await invoke_plain(front.addr, 1)
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline:
                        raise AssertionError("runner never reachable with the new "
                                             "certificate:\n" + front.output()) from None
            assert resp[0].status_code == 200
            assert "polls back off" not in front.output()  # never parked: the re-dial did it
