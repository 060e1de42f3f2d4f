"""Certificates and gRPC credentials: a dev CA, issued certs, validated loading, reload."""

from fnlb.tls._issue import (
    ClientTLS,
    ReloadingServerCredentials,
    TLSConfigError,
    TLSFiles,
    TLSMaterial,
    channel_credentials,
    init_ca,
    issue_cert,
    server_credentials,
)

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
]
