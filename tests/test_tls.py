"""fnlb.tls: minting, validated loading, and real gRPC servers over (m)TLS on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fnlb.tls import (
    ClientTLS,
    ReloadingServerCredentials,
    TLSConfigError,
    TLSFiles,
    channel_credentials,
    init_ca,
    issue_cert,
    server_credentials,
)

SERVER_NAME = "runner.test"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def files(out: Path, name: str, ca_dir: Path) -> TLSFiles:
    return TLSFiles(cert=out / f"{name}.crt", key=out / f"{name}.key", ca=ca_dir / "ca.crt")


@dataclass
class PKI:
    """Two independent CAs (same default name, so only the signature tells them
    apart), each with a server and a client certificate."""

    root: Path

    def ca(self, n: int) -> Path:
        return self.root / f"ca{n}"

    def out(self, n: int) -> Path:
        return self.root / f"out{n}"

    def server(self, n: int) -> TLSFiles:
        return files(self.out(n), "server", self.ca(n))

    def client(self, n: int) -> TLSFiles:
        return files(self.out(n), "client", self.ca(n))


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    p = PKI(tmp_path)
    for n in (1, 2):
        init_ca(p.ca(n))
        issue_cert(p.ca(n), "server", ["127.0.0.1", SERVER_NAME], p.out(n))
        issue_cert(p.ca(n), "client", ["client.test"], p.out(n))
    return p


# --------------------------------------------------------------------------- minting


def test_init_ca_writes_a_p256_ca_and_a_private_key(tmp_path: Path) -> None:
    crt, key = init_ca(tmp_path / "ca", name="test-ca", days=10)
    assert (crt, key) == (tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    assert mode(key) == 0o600
    cert = read_cert(crt)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-ca"
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert timedelta(days=9) < cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=10)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)


def test_init_ca_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    crt, key = init_ca(tmp_path)
    before = crt.read_bytes(), key.read_bytes()
    with pytest.raises(TLSConfigError, match="--force") as e:
        init_ca(tmp_path)
    assert str(crt) in str(e.value)
    assert (crt.read_bytes(), key.read_bytes()) == before

    # A lone leftover key is protected too, and nothing is written half-way.
    crt.unlink()
    with pytest.raises(TLSConfigError, match=f"{key}.*--force"):
        init_ca(tmp_path)
    assert not crt.exists()

    init_ca(tmp_path, force=True)
    assert crt.read_bytes() != before[0] and key.read_bytes() != before[1]
    assert mode(key) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temp files


def test_issue_cert_sans_usages_and_key_identifiers(tmp_path: Path) -> None:
    ca_crt, _ = init_ca(tmp_path / "ca")
    crt, key = issue_cert(
        tmp_path / "ca", "runner-1", ["10.0.0.7", "Runner-1.Local", "::1"], tmp_path / "out"
    )
    assert (crt, key) == (tmp_path / "out" / "runner-1.crt", tmp_path / "out" / "runner-1.key")
    assert mode(key) == 0o600
    cert, ca = read_cert(crt), read_cert(ca_crt)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "runner-1"
    assert cert.issuer == ca.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["runner-1.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(ca)


def test_issue_cert_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    crt, _ = issue_cert(tmp_path / "ca", "a", ["a.test"], tmp_path / "out")
    serial = read_cert(crt).serial_number
    with pytest.raises(TLSConfigError, match=f"{crt}.*--force"):
        issue_cert(tmp_path / "ca", "a", ["a.test"], tmp_path / "out")
    assert read_cert(crt).serial_number == serial
    issue_cert(tmp_path / "ca", "a", ["a.test"], tmp_path / "out", force=True)
    assert read_cert(crt).serial_number != serial


@pytest.mark.parametrize(
    ("name", "sans", "cause"),
    [
        ("../evil", ["a.test"], "name '../evil'"),
        ("", ["a.test"], "name ''"),
        ("a/b", ["a.test"], "name 'a/b'"),
        ("ca", ["a.test"], "reserved"),
        ("ok", [], "at least one SAN"),
        ("ok", ["bad host"], "SAN 'bad host'"),
        ("ok", [""], "SAN ''"),
    ],
)
def test_issue_cert_validates_name_and_sans(
    tmp_path: Path, name: str, sans: list[str], cause: str
) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(TLSConfigError, match=cause):
        issue_cert(tmp_path / "ca", name, sans, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_issue_cert_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=f"{tmp_path / 'ca.crt'}: not found"):
        issue_cert(tmp_path, "a", ["a.test"], tmp_path / "out")


def test_issue_cert_with_explicit_validity(tmp_path: Path) -> None:
    init_ca(tmp_path)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    crt, _ = issue_cert(
        tmp_path, "old", ["a.test"], tmp_path, not_before=start, not_after=start + timedelta(1)
    )
    cert = read_cert(crt)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, start + timedelta(1))
    with pytest.raises(TLSConfigError, match="must be later"):
        issue_cert(tmp_path, "bad", ["a.test"], tmp_path, not_before=start, not_after=start)


# --------------------------------------------------------------------------- loading


def test_load_returns_validated_material(pki: PKI) -> None:
    material = pki.server(1).load()
    cert = read_cert(pki.server(1).cert)
    assert material.subject == "CN=server"
    assert material.sans == (SERVER_NAME, "127.0.0.1")
    assert material.serial == cert.serial_number
    assert material.not_after == cert.not_valid_after_utc
    assert material.ca_pem == pki.server(1).ca.read_bytes()
    assert b"PRIVATE KEY" in material.key_pem
    assert "PRIVATE" not in repr(material) and "CN=server" in repr(material)


def _expired(pki: PKI) -> TLSFiles:
    long_ago = datetime.now(UTC) - timedelta(days=30)
    issue_cert(
        pki.ca(1), "old", ["a.test"], pki.out(1), not_before=long_ago,
        not_after=long_ago + timedelta(days=1),
    )  # fmt: skip
    return files(pki.out(1), "old", pki.ca(1))


def _not_yet_valid(pki: PKI) -> TLSFiles:
    soon = datetime.now(UTC) + timedelta(days=2)
    issue_cert(pki.ca(1), "new", ["a.test"], pki.out(1), not_before=soon)
    return files(pki.out(1), "new", pki.ca(1))


def _garbage(pki: PKI, which: str) -> TLSFiles:
    bad = pki.root / "garbage.pem"
    bad.write_bytes(b"hello, not a certificate\n")
    return _with(pki, **{which: bad})


def _other_named_ca(pki: PKI) -> TLSFiles:
    crt, _ = init_ca(pki.root / "ca3", name="someone-else")
    return _with(pki, ca=crt)


def _with(pki: PKI, **change: Path) -> TLSFiles:
    f = pki.server(1)
    return TLSFiles(**{"cert": f.cert, "key": f.key, "ca": f.ca, **change})


BAD_INPUTS: list[tuple[str, Callable[[PKI], TLSFiles], str]] = [
    ("missing cert", lambda p: _with(p, cert=p.root / "nope.crt"), r"nope\.crt: not found"),
    ("missing key", lambda p: _with(p, key=p.root / "nope.key"), r"nope\.key: not found"),
    ("missing ca", lambda p: _with(p, ca=p.root / "nope.crt"), r"CA file .*nope\.crt: not found"),
    ("unreadable", lambda p: _with(p, cert=p.root), "cannot read it"),
    ("garbage cert", lambda p: _garbage(p, "cert"), r"garbage\.pem: not a PEM certificate"),
    ("garbage ca", lambda p: _garbage(p, "ca"), r"CA file .*garbage\.pem: not a PEM certificate"),
    ("garbage key", lambda p: _garbage(p, "key"), r"garbage\.pem: not a PEM private key"),
    ("cert as key", lambda p: _with(p, key=p.server(1).cert), "not a PEM private key"),
    ("key mismatch", lambda p: _with(p, key=p.client(1).key), r"client\.key: does not match"),
    ("expired", _expired, r"old\.crt: CN=old expired at 20\d\d-"),
    ("not yet valid", _not_yet_valid, r"new\.crt: CN=new is not yet valid; valid from 20\d\d-"),
    ("wrong CA", lambda p: _with(p, ca=p.server(2).ca), r"not signed by the CA in .*ca2/ca\.crt"),
    ("other CA name", _other_named_ca, "not signed by .*issuer CN=fnlb-dev-ca; wrong CA"),
    ("CA as cert", lambda p: _with(p, cert=p.server(2).ca), "does not match"),
]


@pytest.mark.parametrize(
    ("make", "cause"), [(m, c) for _, m, c in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS]
)
def test_load_rejects_bad_input_with_a_clear_cause(
    pki: PKI, make: Callable[[PKI], TLSFiles], cause: str
) -> None:
    with pytest.raises(TLSConfigError, match=cause):
        make(pki).load()


def test_load_checks_validity_against_an_injected_clock(pki: PKI) -> None:
    later = datetime.now(UTC) + timedelta(days=826)
    with pytest.raises(TLSConfigError, match="expired"):
        pki.server(1).load(now=later)


def test_load_accepts_a_bundle_with_old_and_new_ca(pki: PKI) -> None:
    # During a CA rotation peers trust both CAs for a while.
    bundle = pki.root / "bundle.crt"
    bundle.write_bytes(
        pki.ca(1).joinpath("ca.crt").read_bytes() + pki.ca(2).joinpath("ca.crt").read_bytes()
    )
    for n in (1, 2):
        assert _with(pki, cert=pki.server(n).cert, key=pki.server(n).key, ca=bundle).load()


def _rsa_ca(ca_dir: Path, name: str) -> None:
    """An externally made RSA CA (fnlb itself makes EC ones)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir()
    (ca_dir / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (ca_dir / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_rsa_ca_issues_and_its_signatures_are_checked(tmp_path: Path) -> None:
    _rsa_ca(tmp_path / "rsa1", "rsa-ca")
    _rsa_ca(tmp_path / "rsa2", "rsa-ca")
    issue_cert(tmp_path / "rsa1", "leaf", ["a.test"], tmp_path)
    assert files(tmp_path, "leaf", tmp_path / "rsa1").load().subject == "CN=leaf"
    with pytest.raises(TLSConfigError, match="not signed by the CA"):
        files(tmp_path, "leaf", tmp_path / "rsa2").load()


def test_issue_cert_refuses_a_non_ca_certificate(pki: PKI, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(pki.server(1).cert, fake / "ca.crt")
    shutil.copy(pki.server(1).key, fake / "ca.key")
    with pytest.raises(TLSConfigError, match="not a CA certificate"):
        issue_cert(fake, "x", ["x.test"], tmp_path / "out")


# --------------------------------------------------------------------------- gRPC

OK = "OK"


@contextlib.asynccontextmanager
async def running_server(*creds: grpc.ServerCredentials) -> AsyncIterator[list[int]]:
    """A grpc.aio health server on 127.0.0.1:0, one port per credentials object."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    ports = [server.add_secure_port("127.0.0.1:0", c) for c in creds]
    await server.start()
    try:
        yield ports
    finally:
        await server.stop(None)


def _options(target_name: str | None) -> list[tuple[str, object]]:
    # A private subchannel pool: every check makes its own connection and handshake
    # instead of reusing one that another channel with equal arguments opened.
    options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
    if target_name is not None:
        options.append(("grpc.ssl_target_name_override", target_name))
    return options


async def check(
    port: int, creds: grpc.ChannelCredentials, target_name: str | None = None
) -> str | tuple[grpc.StatusCode, str]:
    """OK, or the (code, details) a health Check failed with."""
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=_options(target_name)
    ) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
    return OK


def refused(result: str | tuple[grpc.StatusCode, str], detail: str = "") -> bool:
    return result != OK and result[0] == grpc.StatusCode.UNAVAILABLE and detail in result[1]


async def served_serial(port: int, client: TLSFiles) -> int:
    """Serial of the certificate the server presents, read with Python's ssl module."""

    def handshake() -> bytes:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(client.cert, client.key)
        ctx.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    return x509.load_der_x509_certificate(await asyncio.to_thread(handshake)).serial_number


async def test_mtls_server_accepts_only_clients_with_a_cert_from_its_ca(pki: PKI) -> None:
    server, client1, client2 = pki.server(1).load(), pki.client(1).load(), pki.client(2).load()
    async with running_server(server_credentials(server, require_client_auth=True)) as [port]:
        assert await check(port, channel_credentials(client1)) == OK  # IP SAN 127.0.0.1
        assert await check(port, channel_credentials(client1), SERVER_NAME) == OK  # DNS SAN
        # The server's reason (no certificate / unknown issuer) is only in its own
        # log; the client just sees the connection closed.
        no_cert = channel_credentials(None, ca_only=client1.ca_pem)
        assert refused(await check(port, no_cert), "Socket closed")
        other_ca = channel_credentials(client2, ca_only=client1.ca_pem)
        assert refused(await check(port, other_ca), "Socket closed")


async def test_client_refuses_a_server_without_the_expected_san(pki: PKI) -> None:
    server, client = pki.server(1).load(), pki.client(1).load()
    async with running_server(server_credentials(server, require_client_auth=True)) as [port]:
        result = await check(port, channel_credentials(client), "elsewhere.test")
        assert refused(result, "Hostname Verification Check failed"), result


async def test_client_refuses_a_server_from_an_unknown_ca(pki: PKI) -> None:
    server = pki.server(1).load()
    async with running_server(server_credentials(server, require_client_auth=False)) as [port]:
        result = await check(port, channel_credentials(pki.client(2).load()))
        assert refused(result, "CERTIFICATE_VERIFY_FAILED"), result


async def test_server_only_tls_accepts_clients_without_a_certificate(pki: PKI) -> None:
    server = pki.server(1).load()
    async with running_server(server_credentials(server, require_client_auth=False)) as [port]:
        assert await check(port, channel_credentials(None, ca_only=server.ca_pem)) == OK


def rotate_ca(pki: PKI, n: int) -> None:
    """Replace CA n and everything it issued, as an operator would with --force."""
    init_ca(pki.ca(n), force=True)
    issue_cert(pki.ca(n), "server", ["127.0.0.1", SERVER_NAME], pki.out(n), force=True)
    issue_cert(pki.ca(n), "client", ["client.test"], pki.out(n), force=True)


async def test_reloading_server_serves_new_files_to_new_connections(pki: PKI) -> None:
    reloading = ReloadingServerCredentials(pki.server(1), require_client_auth=True)
    old_server, old_client = pki.server(1).load(), pki.client(1).load()
    async with (
        running_server(reloading.credentials()) as [port],
        grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(old_client), options=_options(None)
        ) as established,
    ):
        stub = health_pb2_grpc.HealthStub(established)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert await served_serial(port, pki.client(1)) == old_server.serial

        rotate_ca(pki, 1)
        new_server, new_client = pki.server(1).load(), pki.client(1).load()

        # No reload() call: grpc asks before every handshake and the files changed.
        assert await check(port, channel_credentials(new_client)) == OK
        assert await served_serial(port, pki.client(1)) == new_server.serial
        assert reloading.material.serial == new_server.serial
        # New connections trust and are trusted by the new CA only ...
        assert refused(await check(port, channel_credentials(old_client)))
        # ... while a connection made before the rotation carries on.
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_reloading_server_keeps_serving_when_new_files_are_invalid(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    reloading = ReloadingServerCredentials(pki.server(1), require_client_auth=True)
    old_serial = reloading.material.serial
    client = channel_credentials(pki.client(1).load())
    async with running_server(reloading.credentials()) as [port]:
        # A half-done rotation: the server's key replaced by another certificate's.
        shutil.copy(pki.client(1).key, pki.server(1).key)
        with caplog.at_level(logging.WARNING, logger="fnlb.tls"):
            assert await check(port, client) == OK
            assert await check(port, client) == OK
        assert await served_serial(port, pki.client(1)) == old_serial
        warnings = [r for r in caplog.records if r.name == "fnlb.tls"]
        assert len(warnings) == 1, "a bad file is reported once, not per handshake"
        assert "does not match" in warnings[0].kv["cause"]  # type: ignore[attr-defined]

        # Finishing the rotation is picked up without a restart.
        issue_cert(pki.ca(1), "server", ["127.0.0.1"], pki.out(1), force=True)
        assert await check(port, client) == OK
        new_serial = read_cert(pki.server(1).cert).serial_number
        assert new_serial != old_serial
        assert await served_serial(port, pki.client(1)) == new_serial


async def test_each_port_gets_its_own_reloading_credentials(pki: PKI) -> None:
    # grpc refuses to bind a second port with the same dynamic credentials object,
    # and would update only one port's configuration per change anyway.
    reloading = ReloadingServerCredentials(pki.server(1), require_client_auth=True)
    async with running_server(reloading.credentials(), reloading.credentials()) as ports:
        rotate_ca(pki, 1)
        new_serial = pki.server(1).load().serial
        for port in ports:
            assert await served_serial(port, pki.client(1)) == new_serial


def test_reload_rereads_the_files_on_demand(pki: PKI) -> None:
    reloading = ReloadingServerCredentials(pki.server(1), require_client_auth=False)
    assert reloading.reload() is False  # same material
    issue_cert(pki.ca(1), "server", ["127.0.0.1"], pki.out(1), force=True)
    assert reloading.reload() is True
    assert reloading.material.serial == pki.server(1).load().serial


def test_reloading_server_refuses_invalid_files_at_startup(pki: PKI) -> None:
    with pytest.raises(TLSConfigError, match="not signed by the CA"):
        ReloadingServerCredentials(_with(pki, ca=pki.server(2).ca), require_client_auth=True)


async def test_client_tls_follows_its_files(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    tls = ClientTLS(pki.client(1))
    first = tls.credentials()
    assert tls.credentials() is first  # unchanged files: same credentials

    issue_cert(pki.ca(1), "client", ["client.test"], pki.out(1), force=True)
    second = tls.credentials()
    assert second is not first
    assert tls.material.serial == read_cert(pki.client(1).cert).serial_number

    shutil.copy(pki.server(1).key, pki.client(1).key)
    with caplog.at_level(logging.WARNING, logger="fnlb.tls"):
        assert tls.credentials() is second  # invalid files: keep the last good ones
    [warning] = [r for r in caplog.records if r.name == "fnlb.tls"]
    assert "does not match" in warning.kv["cause"]  # type: ignore[attr-defined]

    server = server_credentials(pki.server(1).load(), require_client_auth=True)
    async with running_server(server) as [port]:
        assert await check(port, tls.credentials()) == OK
