"""Certificates and gRPC credentials: a dev CA, issued certs, validated loading, reload.

    ca_crt, ca_key = init_ca(Path("certs"))                      # fnlb certs init
    crt, key = issue_cert(Path("certs"), "runner-1", ["127.0.0.1", "runner-1"], Path("out"))
    material = TLSFiles(cert=crt, key=key, ca=ca_crt).load()      # TLSConfigError if unusable
    server.add_secure_port(addr, server_credentials(material, require_client_auth=True))

One module per role: ``_issue`` (the dev CA), ``_load`` (validated loading;
every problem is a ``TLSConfigError`` naming the file and the cause),
``_credentials`` (gRPC credentials, and ``ReloadingServerCredentials`` /
``ClientTLS``, which pick up replaced files for new connections without a
restart), ``_identity`` (the names in a peer's client certificate, for
authorization), ``_expiry`` (how long our certificates have left: logs and a
gauge) and ``_diagnose`` (why a TLS connection failed, in words). Import from
``fnlb.tls``.
"""

from fnlb.tls._credentials import (
    ClientTLS,
    ReloadingServerCredentials,
    channel_credentials,
    server_credentials,
)
from fnlb.tls._diagnose import tls_failure_cause
from fnlb.tls._expiry import CertExpiryWatch
from fnlb.tls._identity import PeerCertificate, peer_certificate
from fnlb.tls._issue import init_ca, issue_cert
from fnlb.tls._load import TLSConfigError, TLSFiles, TLSMaterial

__all__ = [
    "TLSConfigError",
    "TLSFiles",
    "TLSMaterial",
    "ClientTLS",
    "ReloadingServerCredentials",
    "init_ca",
    "issue_cert",
    "server_credentials",
    "channel_credentials",
    "CertExpiryWatch",
    "PeerCertificate",
    "peer_certificate",
    "tls_failure_cause",
]
