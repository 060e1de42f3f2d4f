"""Authorization decisions (fnlb.authz) and certificate names (fnlb.tls identity), by table."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fnlb.authz import (
    AdminPolicy,
    Caller,
    close_decision,
    parse_pattern,
    parse_patterns,
    split_list,
)
from fnlb.errors import ConfigError
from fnlb.tls import PeerCertificate, TLSFiles, init_ca, issue_cert, peer_certificate
from fnlb.tls._diagnose import tls_failure_cause
from runner_stub.cli import parse_config
from runner_stub.config import StubConfig


def cert(cn: str, *dns: str, ips: tuple[str, ...] = (), uris: tuple[str, ...] = ()
         ) -> PeerCertificate:
    return PeerCertificate(common_name=cn, dns=dns, uris=uris,
                           ips=tuple(ipaddress.ip_address(i) for i in ips))


def caller(c: PeerCertificate | None = None, ip: str = "10.0.0.9") -> Caller:
    return Caller(ip=ipaddress.ip_address(ip), cert=c)


ADMIN = cert("admin", "admin")
RUNNER_A = cert("runner-a", "runner-a.pool", ips=("10.0.0.1",))
RUNNER_B = cert("runner-b", "runner-b.pool", ips=("10.0.0.2",))
CLIENT = cert("client", "client")
SPIFFE = cert("", uris=("spiffe://fnlb/ops/alice",))

WITH_CA = AdminPolicy.from_flags(("admin", "spiffe://fnlb/ops/*"), ("self:runner-*",),
                                 client_ca=True)


@pytest.mark.parametrize(("who", "method", "host", "ttl", "allowed", "says"), [
    # --admin-allow: every method, by identity (CN, SAN DNS or URI pattern).
    (ADMIN, "DrainRunner", "10.0.0.1", 0, True, "--admin-allow admin"),
    (ADMIN, "ListRunners", None, 0, True, "--admin-allow admin"),
    (SPIFFE, "RemoveRunner", "10.0.0.1", 0, True, "--admin-allow spiffe://fnlb/ops/*"),
    # A runner registers (heartbeats) and removes only its own address.
    (RUNNER_A, "AddRunner", "10.0.0.1", 10, True, "--register-allow self:runner-*"),
    (RUNNER_A, "AddRunner", "runner-a.pool", 10, True, "its own address"),
    (RUNNER_A, "RemoveRunner", "10.0.0.1", 0, True, "its own address"),
    (RUNNER_A, "AddRunner", "10.0.0.2", 10, False, "only its own address"),
    (RUNNER_A, "RemoveRunner", "runner-b.pool", 0, False, "only its own address"),
    (RUNNER_A, "AddRunner", "10.0.0.1", 0, False, "ttl_s > 0"),
    # ... and never drains or lists, not even itself (the hijack of issue 14).
    (RUNNER_A, "DrainRunner", "10.0.0.2", 0, False, "identity 'runner-a.pool'"),
    (RUNNER_A, "DrainRunner", "10.0.0.1", 0, False, "not in --admin-allow (admin,"),
    (RUNNER_A, "ListRunners", None, 0, False, "not in --admin-allow"),
    # A front-door client certificate from the same CA: nothing.
    (CLIENT, "ListRunners", None, 0, False, "identity 'client'"),
    (CLIENT, "AddRunner", "client", 10, False, "nor in --register-allow (self:runner-*)"),
    # No certificate (plaintext or server-only TLS): nothing with a CA.
    (None, "ListRunners", None, 0, False, "without a client certificate from 10.0.0.9"),
])
def test_admin_policy_with_a_client_ca(who: PeerCertificate | None, method: str,
                                       host: str | None, ttl: int, allowed: bool,
                                       says: str) -> None:
    d = WITH_CA.decide(method, caller(who), host, ttl)
    if d.needs_address:
        assert host is not None
        d = WITH_CA.decide(method, caller(who), host, ttl)
    assert (d.allowed, says in d.reason) == (allowed, True), d.reason


def test_needs_address_only_for_self_registration() -> None:
    d = WITH_CA.decide("AddRunner", caller(RUNNER_A))
    assert (d.allowed, d.needs_address) == (False, True)
    d = WITH_CA.decide("AddRunner", caller(CLIENT))
    assert (d.allowed, d.needs_address) == (False, False)


def test_defaults() -> None:
    plain = AdminPolicy.from_flags(None, (), client_ca=False)
    assert plain.decide("DrainRunner", caller(ip="127.0.0.1"), "10.0.0.1").allowed
    assert plain.decide("DrainRunner", caller(ip="::1"), "10.0.0.1").allowed
    refused = plain.decide("ListRunners", caller(ip="10.1.2.3"))
    assert not refused.allowed
    assert "default without --front-tls-ca: loopback" in refused.reason
    # With a CA: nobody, not "any certificate from the CA", not loopback either.
    ca = AdminPolicy.from_flags(None, (), client_ca=True)
    for who in (ADMIN, RUNNER_A, CLIENT):
        d = ca.decide("ListRunners", caller(who, ip="127.0.0.1"))
        assert not d.allowed and "default with --front-tls-ca: nobody" in d.reason
    assert not ca.anyone_registers
    # The workers' private unix socket is the supervisor.
    assert ca.decide("DrainRunner", Caller(unix=True), "10.0.0.1").allowed


def test_registrars_and_addresses() -> None:
    p = AdminPolicy.from_flags(("ip:192.168.0.0/16",), ("controller", "self"), client_ca=True)
    ctl = caller(cert("controller", "controller"))
    assert p.decide("AddRunner", ctl, "10.0.0.7", 0).allowed      # any address, for good
    assert p.decide("RemoveRunner", ctl, "10.0.0.7").allowed
    assert not p.decide("DrainRunner", ctl, "10.0.0.7").allowed  # never a drain
    # `self`: any certificate, its own address only.
    d = p.decide("AddRunner", caller(CLIENT))
    assert not d.allowed and d.needs_address
    assert p.decide("AddRunner", caller(CLIENT), "client", 5).allowed
    d = p.decide("AddRunner", caller(CLIENT), "10.0.0.7", 5)
    assert not d.allowed and "--register-allow self lets it add or remove only its own" in d.reason
    # ip:CIDR needs no certificate.
    assert p.decide("DrainRunner", caller(ip="192.168.4.4"), "x").allowed
    assert not p.decide("DrainRunner", caller(ip="192.169.4.4"), "x").allowed


def test_patterns() -> None:
    assert parse_pattern("ops-*", "f").matches_identity("ops-alice")
    assert not parse_pattern("ops-*", "f").matches_identity("xops-alice")
    assert parse_pattern("*.ops.example", "f").matches_identity("a.ops.example")
    assert not parse_pattern("*.ops.example", "f").matches_identity("ops.example")
    assert parse_pattern("*", "f").matches_identity("anything")
    assert not parse_pattern("ip:10.0.0.0/8", "f").matches_identity("10.0.0.1")
    for bad in ("a*b", "*a*", "**", "with space", "ip:300.1.1.1", "ip:", "x\x7f"):
        with pytest.raises(ConfigError, match="^f: "):
            parse_pattern(bad, "f")
    assert split_list(" a, b,,a ") == ("a", "b")
    assert split_list("none") == ()


def test_identity_patterns_need_a_client_ca() -> None:
    with pytest.raises(ConfigError, match="--admin-allow admin: identities come from client"):
        AdminPolicy.from_flags(("admin", "loopback"), (), client_ca=False)
    with pytest.raises(ConfigError, match="--register-allow"):
        AdminPolicy.from_flags(None, ("self",), client_ca=False)
    with pytest.raises(ConfigError, match="self:PATTERN takes an identity"):
        AdminPolicy.from_flags(None, ("self:ip:10.0.0.0/8",), client_ca=True)
    AdminPolicy.from_flags(("ip:10.0.0.0/8", "loopback"), (), client_ca=False)


def test_owns_host() -> None:
    c = cert("r", "Runner-1.Pool.", "*.wild.example", ips=("10.0.0.1", "fd00::1"))
    assert c.owns_host("runner-1.pool") and c.owns_host("RUNNER-1.pool.")
    assert c.owns_host("a.wild.example") and not c.owns_host("a.b.wild.example")
    assert not c.owns_host("wild.example")
    assert c.owns_host("10.0.0.1") and c.owns_host("[fd00::1]")
    assert not c.owns_host("10.0.0.2") and not c.owns_host("r")  # the CN names no host
    assert c.identities == ("Runner-1.Pool.", "*.wild.example", "r")


def test_peer_certificate_from_an_issued_certificate(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    crt, _ = issue_cert(tmp_path / "ca", "admin", ["admin", "127.0.0.1"], tmp_path)
    pem = crt.read_bytes()
    c = peer_certificate({"x509_pem_cert": [pem], "x509_common_name": [b"admin"]})
    assert c is not None
    assert (c.identities, c.owns_host("127.0.0.1")) == (("admin",), True)
    assert c.describe() == "CN=admin SAN=DNS:admin,IP:127.0.0.1"
    # Without the PEM, grpc's own properties.
    c = peer_certificate({"x509_common_name": [b"op"],
                          "x509_subject_alternative_name": [b"op.example"]})
    assert c is not None and c.identities == ("op.example", "op")
    assert peer_certificate({"transport_security_type": [b"ssl"]}) is None


def test_describe_is_bounded() -> None:
    c = cert("x" * 5000, *(f"n{i}" + "y" * 500 for i in range(50)))
    text = Caller(ip=ipaddress.ip_address("10.0.0.1"), cert=c).describe()
    assert len(text) < 3000 and "+42 more" in text


# -- why a TLS connection failed ---------------------------------------------------------

_ERR = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: {}: OK")


@pytest.mark.parametrize(("details", "says"), [
    (_ERR.format("certificate has expired"), "the peer's certificate has expired"),
    (_ERR.format("unable to get local issuer certificate"), "unknown CA"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Custom "
     "verification check failed with error: UNAUTHENTICATED: Hostname Verification Check "
     "failed.", "name mismatch"),
    ("... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL "
     "routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification "
     "context: OK", "does not speak TLS"),
    ("... SSLV3_ALERT_CERTIFICATE_EXPIRED ...", "refused our certificate: it has expired"),
    ("... TLSV1_ALERT_UNKNOWN_CA ...", "does not trust the CA of our certificate"),
])
def test_tls_failure_causes(details: str, says: str) -> None:
    cause = tls_failure_cause(details)
    assert cause is not None and says in cause, cause


def test_tls_failure_cause_of_our_own_expired_certificate(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    crt, key = issue_cert(tmp_path / "ca", "lb", ["127.0.0.1"], tmp_path, days=1)
    material = TLSFiles(crt, key, tmp_path / "ca" / "ca.crt").load()
    closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:1.2.3.4:5: " \
             "Socket closed"
    assert tls_failure_cause(closed, material) is None  # valid: nothing to say
    later = datetime.now(UTC) + timedelta(days=2)
    cause = tls_failure_cause(closed, material, now=later)
    assert cause is not None and "our certificate (CN=lb) expired at" in cause
    assert tls_failure_cause("connection refused") is None


# -- the runner stub's Close -----------------------------------------------------------------

LB = cert("lb", ips=("10.0.0.100",))


@pytest.mark.parametrize(("who", "ip", "allow", "tls", "insecure", "allowed", "says"), [
    (LB, "10.0.0.100", "lb", True, False, True, "--close-allow lb"),
    (CLIENT, "10.0.0.100", "lb", True, False, False,
     "identity 'client' (CN=client SAN=DNS:client) from 10.0.0.100 is not in --close-allow (lb)"),
    (LB, "127.0.0.1", "", True, False, False, "not in --close-allow (nobody)"),  # TLS default
    (None, "127.0.0.1", "", False, False, True, "a loopback caller (no TLS)"),
    (None, "10.1.1.1", "", False, False, False, "without TLS only loopback callers may drain"),
    (None, "10.1.1.1", "ip:10.1.0.0/16", False, False, True, "--close-allow ip:10.1.0.0/16"),
    (None, "10.1.1.1", "", False, True, True, "--allow-insecure-close"),
])
def test_close_decision(who: PeerCertificate | None, ip: str, allow: str, tls: bool,
                        insecure: bool, allowed: bool, says: str) -> None:
    d = close_decision(caller(who, ip), parse_patterns(split_list(allow), "--close-allow"),
                       tls=tls, allow_insecure=insecure)
    assert (d.allowed, says in d.reason) == (allowed, True), d.reason


def test_stub_close_flags(tmp_path: Path) -> None:
    cfg = parse_config(["--close-allow", "ip:10.0.0.0/8,loopback"], environ={})
    assert [p.text for p in cfg.close_patterns()] == ["ip:10.0.0.0/8", "loopback"]
    assert parse_config([], environ={"RUNNER_STUB_ALLOW_INSECURE_CLOSE": "1"}).allow_insecure_close
    assert parse_config(["--allow-insecure-close"], environ={}).allow_insecure_close
    assert not parse_config([], environ={}).allow_insecure_close
    with pytest.raises(ConfigError, match="--close-allow lb: identities come from client"):
        StubConfig(close_allow="lb")
    init_ca(tmp_path / "ca")
    crt, key = issue_cert(tmp_path / "ca", "r", ["127.0.0.1"], tmp_path)
    tls = {"tls_cert": str(crt), "tls_key": str(key), "tls_ca": str(tmp_path / "ca" / "ca.crt")}
    with pytest.raises(ConfigError, match="--allow-insecure-close is for runners without TLS"):
        StubConfig(allow_insecure_close=True, **tls)
    StubConfig(close_allow="lb", **tls)
