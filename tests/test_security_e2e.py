"""Who may do what, end to end: real LB and runner-stub processes, certificates from `fnlb certs`.

Issue 14's findings: a self-registered runner's certificate drained a static
runner through Admin (traffic hijack), any certificate from the CA could call
Admin, an unauthenticated Close drained a runner, certificate expiry went
unexplained. Runners sit on distinct loopback addresses (127.0.0.2, .3) so that
each owns its host, as separate machines would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf import empty_pb2
from prometheus_client.parser import text_string_to_metric_families

from fnlb.harness import Proc, running, wait_until
from fnlb.tls import init_ca, issue_cert
from fnlb.v1 import lb_pb2, lb_pb2_grpc, runner_pb2, runner_pb2_grpc

pytestmark = pytest.mark.slow

A_HOST, B_HOST = "127.0.0.2", "127.0.0.3"


def certs_cli(*args: str) -> None:
    """``fnlb certs ...`` as an operator runs it."""
    r = subprocess.run([sys.executable, "-m", "fnlb", "certs", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs_cli("init", "--out", str(d / "ca"))
    # The issue's recipe: identity `admin`.
    certs_cli("issue", "--ca", str(d / "ca"), "--name", "admin", "--san", "admin",
              "--out", str(d))
    # An LB certificate that expires in 3 days: the near-expiry warning.
    certs_cli("issue", "--ca", str(d / "ca"), "--name", "lb-soon", "--san", "127.0.0.1",
              "--days", "3", "--out", str(d))
    for name, sans in (("lb", ["127.0.0.1"]), ("runner-a", [A_HOST]),
                       ("runner-b", [B_HOST]), ("client", ["client"])):
        issue_cert(d / "ca", name, sans, d)
    return d


def tls_flags(pki: Path, name: str, prefix: str = "") -> list[str]:
    return [f"--{prefix}tls-cert", str(pki / f"{name}.crt"),
            f"--{prefix}tls-key", str(pki / f"{name}.key"),
            f"--{prefix}tls-ca", str(pki / "ca" / "ca.crt")]


def stub(pki: Path, name: str, host: str, *args: str) -> contextlib.AbstractContextManager[Proc]:
    return running("runner_stub", ["--listen", f"{host}:0", *tls_flags(pki, name), *args])


def lb(pki: Path, runners: list[str], *args: str,
       runner_cert: str = "lb") -> contextlib.AbstractContextManager[Proc]:
    return running("fnlb", [
        "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--runners", ",".join(runners),
        "--placer-timeout", "5s", "--health-interval", "200ms",
        *tls_flags(pki, runner_cert), *tls_flags(pki, "lb", "front-"), *args])


def creds(pki: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca" / "ca.crt").read_bytes(), (pki / f"{name}.key").read_bytes(),
        (pki / f"{name}.crt").read_bytes())


@contextlib.asynccontextmanager
async def admin_as(pki: Path, front: Proc, name: str) -> AsyncIterator[lb_pb2_grpc.AdminStub]:
    async with grpc.aio.secure_channel(front.fields["admin_addr"], creds(pki, name)) as ch:
        yield lb_pb2_grpc.AdminStub(ch)


async def refused(call: Awaitable[object]) -> str:
    """The details of a PERMISSION_DENIED (fails on any other outcome)."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
    return e.value.details() or ""


async def runners_by_address(pki: Path, front: Proc) -> dict[str, lb_pb2.RunnerInfo]:
    async with admin_as(pki, front, "admin") as admin:
        resp = await admin.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5)
    return {r.address: r for r in resp.runners}


async def served_by(pki: Path, front: Proc, n: int) -> list[str]:
    async with grpc.aio.secure_channel(front.addr, creds(pki, "client")) as ch:
        s = lb_pb2_grpc.LoadBalancerStub(ch)
        return [(await s.Invoke(lb_pb2.InvokeRequest(fn_id="f", body=b"x"), timeout=10)).runner
                for _ in range(n)]


@contextlib.contextmanager
def cluster(pki: Path) -> Iterator[tuple[Proc, Proc, Proc]]:
    """Static runner A; runner B registers itself; only `admin` may call Admin."""
    with stub(pki, "runner-a", A_HOST, "--close-allow", "lb") as a, \
            lb(pki, [a.addr], "--admin-allow", "admin",
               "--register-allow", "self:runner-*") as front, \
            stub(pki, "runner-b", B_HOST, "--close-allow", "lb",
                 "--register-with", front.fields["admin_addr"], "--register-ttl", "3s") as b:
        b.wait_for_line("registered with LB")
        yield front, a, b


async def test_admin_refusals_name_the_identity_and_the_rule(pki: Path) -> None:
    with cluster(pki) as (front, a, b):
        listed = await runners_by_address(pki, front)  # `admin` may
        assert set(listed) == {a.addr, b.addr}  # B registered its own address
        assert listed[b.addr].source == "registered"
        added = front.wait_for_line(rf"runner added by admin.*runner={b.addr}")
        assert 'rule="--register-allow self:runner-* (its own address)"' in added

        # A front-door client certificate from the same CA: no Admin at all.
        async with admin_as(pki, front, "client") as as_client:
            why = await refused(as_client.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5))
            assert "identity 'client'" in why and "not in --admin-allow (admin)" in why
            why = await refused(as_client.AddRunner(
                lb_pb2.AddRunnerRequest(address="client:9190", ttl_s=5), timeout=5))
            assert "identity 'client'" in why and "--register-allow (self:runner-*)" in why

        async with admin_as(pki, front, "runner-b") as as_b:
            # The hijack of issue 14: B drains the static runner A.
            why = await refused(as_b.DrainRunner(
                lb_pb2.DrainRunnerRequest(address=a.addr), timeout=5))
            assert "Admin/DrainRunner refused: identity 'runner-b'" in why
            assert "not in --admin-allow (admin)" in why
            # ... removes it, or registers A's (or any other) address as its own.
            why = await refused(as_b.RemoveRunner(
                lb_pb2.RemoveRunnerRequest(address=a.addr), timeout=5))
            assert "lets it add or remove only its own address" in why
            for address in (a.addr, f"{A_HOST}:1"):
                why = await refused(as_b.AddRunner(
                    lb_pb2.AddRunnerRequest(address=address, ttl_s=5), timeout=5))
                assert "identity 'runner-b'" in why
                assert f"--register-allow self:runner-* lets it add or remove only its own " \
                       f"address (a host among its SANs), not {A_HOST}" in why
            # Its own address, but for good (no TTL): only --admin-allow may.
            why = await refused(as_b.AddRunner(
                lb_pb2.AddRunnerRequest(address=b.addr), timeout=5))
            assert "ttl_s > 0" in why
            await refused(as_b.ListRunners(lb_pb2.ListRunnersRequest(), timeout=5))

        # Nothing happened: A is in service and gets its share of the calls.
        listed = await runners_by_address(pki, front)
        assert set(listed) == {a.addr, b.addr}
        assert listed[a.addr].state != "draining"
        assert a.addr in await served_by(pki, front, 20)
        assert not any("close accepted" in line or "draining" in line for line in a.read_lines())
        front.wait_for_line(r"admin call refused.*rpc=DrainRunner.*caller=runner-b")


async def test_runner_close_needs_an_allowed_identity(pki: Path) -> None:
    with stub(pki, "runner-a", A_HOST, "--close-allow", "lb") as a:
        for name in ("client", "runner-b", "admin"):
            async with grpc.aio.secure_channel(a.addr, creds(pki, name)) as ch:
                why = await refused(runner_pb2_grpc.RunnerStub(ch).Close(
                    runner_pb2.CloseRequest(), timeout=5))
            assert f"Runner/Close refused: identity '{name}'" in why
            assert "not in --close-allow (lb)" in why
        async with grpc.aio.secure_channel(a.addr, creds(pki, "lb")) as ch:
            status = await runner_pb2_grpc.RunnerStub(ch).Status(empty_pb2.Empty(), timeout=5)
        assert not status.draining


async def test_the_lbs_own_drain_still_works(pki: Path) -> None:
    with cluster(pki) as (front, a, b):
        async with admin_as(pki, front, "admin") as admin:
            call = admin.DrainRunner(lb_pb2.DrainRunnerRequest(address=a.addr), timeout=10)
            assert (await call).draining
            trailers = dict(await call.trailing_metadata() or ())
        assert "fnlb-drain-error" not in trailers  # A took the LB's Close
        a.wait_for_line(r'close accepted.*rule="--close-allow lb"')
        a.wait_for_line("msg=draining")
        assert set(await served_by(pki, front, 10)) == {b.addr}


def _local_ip() -> str | None:
    """A non-loopback IPv4 address of this machine, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") else ip


@pytest.mark.parametrize("insecure", [False, True])
async def test_plaintext_close_only_from_loopback(insecure: bool) -> None:
    ip = _local_ip()
    if ip is None:
        pytest.skip("no non-loopback address to call from")
    args = ["--listen", "0.0.0.0:0", *(["--allow-insecure-close"] if insecure else [])]
    with running("runner_stub", args) as r:
        port = r.addr.rpartition(":")[2]
        async with grpc.aio.insecure_channel(f"{ip}:{port}") as ch:
            close = runner_pb2_grpc.RunnerStub(ch).Close(runner_pb2.CloseRequest(), timeout=5)
            if insecure:
                assert (await close).drained
                return
            why = await refused(close)
        assert f"a caller without a client certificate from {ip}" in why
        assert "only loopback callers may drain" in why
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert (await runner_pb2_grpc.RunnerStub(ch).Close(
                runner_pb2.CloseRequest(), timeout=5)).drained


def _expiry(text: str) -> dict[str, float]:
    return {s.labels["role"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "fnlb_tls_cert_expiry_seconds"}


def _not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def test_certificate_expiry_is_logged_and_exported(pki: Path) -> None:
    with stub(pki, "runner-a", A_HOST) as a, lb(pki, [a.addr], runner_cert="lb-soon") as front:
        warn = front.wait_for_line(r"level=warning.*tls certificate expires soon")
        assert "role=runner_client" in warn and "CN=lb-soon" in warn and "expires_in=3.0d" in warn
        info = front.wait_for_line(r"level=info.*tls certificate expiry.*role=front")
        assert "CN=lb" in info
        with urllib.request.urlopen(f"http://{front.fields['metrics_addr']}/metrics",
                                    timeout=5) as r:
            scraped_at = time.time()
            seconds = _expiry(r.read().decode())
        assert abs(seconds["runner_client"] - (_not_after(pki / "lb-soon.crt") - scraped_at)) < 60
        assert abs(seconds["front"] - (_not_after(pki / "lb.crt") - scraped_at)) < 60
        assert 2.9 * 86400 < seconds["runner_client"] < 3 * 86400


async def test_the_lbs_own_expired_certificate_is_named_as_the_cause(
        pki: Path, fixed_port: int) -> None:
    """Issue 14 #7: the LB's runner certificate expired, then a runner (re)connected."""
    now = datetime.now(UTC)
    d = pki / "short"
    issue_cert(pki / "ca", "lb-short", ["127.0.0.1"], d, force=True,
               not_before=now - timedelta(minutes=1), not_after=now + timedelta(seconds=12))
    expires = _not_after(d / "lb-short.crt")
    runner_addr = f"127.0.0.1:{fixed_port}"
    with running("fnlb", ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
                          "--admin-listen", "", "--runners", runner_addr,
                          "--health-interval", "200ms", "--health-backoff-max", "200ms",
                          "--tls-cert", str(d / "lb-short.crt"),
                          "--tls-key", str(d / "lb-short.key"),
                          "--tls-ca", str(pki / "ca" / "ca.crt")]) as front:
        front.wait_for_line(r"level=warning.*tls certificate expires soon.*role=runner_client")
        # The runner comes up only once the LB's certificate has expired.
        await wait_until(lambda: time.time() > expires + 0.5, 30, "the certificate's expiry")
        start = len(front.read_lines())
        # The runner's own certificate is fine (it names 127.0.0.1): only the LB's is not.
        with running("runner_stub", ["--listen", runner_addr, *tls_flags(pki, "lb")]):
            line = await asyncio.to_thread(
                front.wait_for_line, rf"runner unreachable.*runner={runner_addr}.*tls_cause=",
                20, start)
        assert "our certificate (CN=lb-short) expired at" in line, line


async def test_tls_causes_of_runners_the_lb_cannot_trust(pki: Path, tmp_path: Path) -> None:
    init_ca(tmp_path / "other", name="someone-else")
    issue_cert(tmp_path / "other", "stranger", [A_HOST], tmp_path)
    issue_cert(pki / "ca", "misnamed", ["elsewhere.example"], tmp_path)
    with running("runner_stub", ["--listen", f"{A_HOST}:0", "--tls-cert",
                                 str(tmp_path / "stranger.crt"), "--tls-key",
                                 str(tmp_path / "stranger.key"), "--tls-ca",
                                 str(tmp_path / "other" / "ca.crt")]) as stranger, \
            running("runner_stub", ["--listen", f"{B_HOST}:0", "--tls-cert",
                                    str(tmp_path / "misnamed.crt"), "--tls-key",
                                    str(tmp_path / "misnamed.key"), "--tls-ca",
                                    str(pki / "ca" / "ca.crt")]) as misnamed, \
            lb(pki, [stranger.addr, misnamed.addr]) as front:
        line = front.wait_for_line(rf"runner unreachable.*runner={stranger.addr}.*tls_cause=")
        assert "unknown CA" in line, line
        line = front.wait_for_line(rf"runner unreachable.*runner={misnamed.addr}.*tls_cause=")
        assert "name mismatch" in line, line
