"""Validated loading: certificate, key and CA files in, PEM bytes for gRPC out.

    material = TLSFiles(cert=crt, key=key, ca=ca_crt).load()      # TLSConfigError if unusable

Loading checks up front what a TLS handshake would otherwise report much later and
much less clearly (an expired certificate, a key that belongs to another
certificate, a certificate from another CA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fnlb.errors import ConfigError

__all__ = ["TLSConfigError", "TLSFiles", "TLSMaterial"]


class TLSConfigError(ConfigError):
    """Expected: TLS files or settings are unusable; the message names the file and the cause."""


@dataclass(frozen=True)
class TLSMaterial:
    """Validated PEM bytes ready for gRPC, plus what is worth logging about them."""

    cert_pem: bytes = field(repr=False)
    # repr=False so that logging or printing the material never leaks the key.
    key_pem: bytes = field(repr=False)
    ca_pem: bytes = field(repr=False)
    subject: str
    sans: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate (chain), its private key and the CA bundle that peers use.

    ``load()`` reads and validates them; every problem is a ``TLSConfigError``.
    """

    cert: Path
    key: Path
    # None: server-only TLS (no client certificates checked, nothing to verify against).
    ca: Path | None = None

    def load(self, *, now: datetime | None = None) -> TLSMaterial:
        now = _utc(now) if now is not None else datetime.now(UTC)
        chain = _load_certs(self.cert, "certificate")
        key = _load_key(self.key)
        cas = _load_certs(self.ca, "CA") if self.ca is not None else []
        leaf = chain[0]
        if _spki(key.public_key()) != _spki(leaf.public_key()):
            raise TLSConfigError(
                f"key file {self.key}: does not match certificate {self.cert} "
                "(the key belongs to another certificate)"
            )
        for cert in chain:
            _check_validity(cert, self.cert, "certificate", now)
        if self.ca is not None:
            for ca in cas:
                _check_validity(ca, self.ca, "CA certificate", now)
            _check_issued_by(chain, cas, self.cert, self.ca)
        return TLSMaterial(
            cert_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            ca_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas),
            subject=leaf.subject.rfc4514_string(),
            sans=_sans(leaf),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    def _signature(self) -> tuple[object, ...]:
        """What changes when any of the files is replaced or rewritten (cheap: stat only)."""
        sig: list[object] = []
        for path in (self.cert, self.key, self.ca):
            if path is None:
                continue
            try:
                st = path.stat()
            except OSError as e:
                sig.append(("error", e.errno))
            else:
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sig)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{what} file {path}: not found") from None
    except OSError as e:
        raise TLSConfigError(f"{what} file {path}: cannot read it: {e.strerror or e}") from None


def _load_certs(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"{what} file {path}: not a PEM certificate")
    return certs


def _load_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"key file {path}: the private key is encrypted; fnlb needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"key file {path}: not a PEM private key") from None


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_validity(cert: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    subject = cert.subject.rfc4514_string()
    if now > cert.not_valid_after_utc:
        raise TLSConfigError(
            f"{what} file {path}: {subject} expired at {cert.not_valid_after_utc.isoformat()}"
        )
    if now < cert.not_valid_before_utc:
        raise TLSConfigError(
            f"{what} file {path}: {subject} is not yet valid; valid from "
            f"{cert.not_valid_before_utc.isoformat()}"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    # verify_directly_issued_by checks that the issuer name matches and verifies the
    # signature with the issuer's key using the certificate's own algorithm: ECDSA
    # with its hash for EC issuers, PKCS#1 v1.5 (or PSS) for RSA, Ed25519/Ed448.
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_issued_by(
    chain: list[x509.Certificate], cas: list[x509.Certificate], cert_path: Path, ca_path: Path
) -> None:
    for child, parent in zip(chain, chain[1:], strict=False):
        if not _issued_by(child, parent):
            raise TLSConfigError(
                f"certificate file {cert_path}: the chain is broken: "
                f"{child.subject.rfc4514_string()} is not signed by "
                f"{parent.subject.rfc4514_string()}"
            )
    top = chain[-1]
    if any(_issued_by(top, ca) or top == ca for ca in cas):
        return
    raise TLSConfigError(
        f"certificate file {cert_path}: not signed by the CA in {ca_path} "
        f"(issuer {top.issuer.rfc4514_string()}; wrong CA?)"
    )


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    dns = ext.value.get_values_for_type(x509.DNSName)
    ips = ext.value.get_values_for_type(x509.IPAddress)
    return tuple(dns) + tuple(str(ip) for ip in ips)
