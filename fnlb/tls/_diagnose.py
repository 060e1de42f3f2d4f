"""Why a TLS connection failed, in words: from grpc's error text and our own certificate.

    cause = tls_failure_cause(error.details(), tls.material)
    # "the runner's certificate has expired (CERTIFICATE_VERIFY_FAILED: ...)"

grpc reports what BoringSSL said on *our* side of the handshake: the peer's
certificate expired, came from an unknown CA or names another host. When the
peer refuses *our* certificate (TLS 1.3 sends it after the client considers the
handshake done) we only see "Socket closed"; our own certificate's dates are
then what can tell an expired client certificate apart.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fnlb.tls._load import TLSMaterial

__all__ = ["tls_failure_cause"]

# (pattern in grpc's error text, cause); the first match wins. Texts are
# BoringSSL's (CERTIFICATE_VERIFY_FAILED: <X509 verify error>, TLS alerts) and
# grpc's own hostname check.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), c) for p, c in (
        (r"certificate has expired", "the peer's certificate has expired"),
        (r"certificate is not yet valid",
         "the peer's certificate is not valid yet (its clock or ours is wrong)"),
        (r"unable to get local issuer certificate|self.signed certificate|unable to verify "
         r"the first certificate|certificate signature failure|unable to get issuer",
         "the peer's certificate is not signed by a CA we trust (unknown CA: check --tls-ca)"),
        (r"Hostname Verification Check failed|Peer name .* is not in peer certificate"
         r"|hostname mismatch",
         "the peer's certificate does not name the host we dialled (name mismatch: its SANs "
         "must hold the runner's address, or --runner-server-name)"),
        (r"ALERT_CERTIFICATE_EXPIRED", "the peer refused our certificate: it has expired"),
        (r"ALERT_UNKNOWN_CA", "the peer does not trust the CA of our certificate (unknown CA)"),
        (r"ALERT_BAD_CERTIFICATE|ALERT_CERTIFICATE_REQUIRED|ALERT_HANDSHAKE_FAILURE",
         "the peer refused our certificate"),
        (r"WRONG_VERSION_NUMBER", "the peer does not speak TLS (a plaintext server?)"),
    ))
_HANDSHAKE = re.compile(r"(?:Tls|Ssl) handshake failed[^:]*:\s*(.*)", re.IGNORECASE)
# A failure during or right after the handshake, where our own certificate may
# be the reason; "Connection refused" and the like are not.
_TLS_STAGE = re.compile(r"Socket closed|handshake|SSL|TSI_|end of file|EOF", re.IGNORECASE)


def tls_failure_cause(details: str, local: TLSMaterial | None = None, *,
                      now: datetime | None = None) -> str | None:
    """The cause of a failed TLS connection, or None when nothing says it was TLS.

    ``details`` is grpc's error text (``AioRpcError.details()`` or
    ``debug_error_string()``); ``local`` the certificate we presented.
    """
    now = now if now is not None else datetime.now(UTC)
    causes = []
    if local is not None and _TLS_STAGE.search(details):
        if now >= local.not_after:
            causes.append(f"our certificate ({local.subject}) expired at "
                          f"{local.not_after.isoformat()}: replace it")
        elif now < local.not_before:
            causes.append(f"our certificate ({local.subject}) is not valid before "
                          f"{local.not_before.isoformat()}")
    for pattern, cause in _CAUSES:
        m = pattern.search(details)
        if m:
            causes.append(f"{cause} ({_excerpt(details, m.start())})")
            break
    else:
        m = _HANDSHAKE.search(details)
        if m:
            causes.append(f"TLS handshake failed: {_trim(m.group(1)[:200])}")
    return "; ".join(causes) or None


def _excerpt(details: str, at: int) -> str:
    """The words of the error around ``at``: BoringSSL's reason, without grpc's framing."""
    start = details.rfind("OPENSSL_internal:", 0, at)
    start = at if start < 0 else start + len("OPENSSL_internal:")
    return _trim(details[start:at + 80].split("\n")[0])


def _trim(text: str) -> str:
    return text.strip().removesuffix(": OK").strip()
