"""The dev CA behind ``fnlb certs init`` / ``fnlb certs issue``.

    ca_crt, ca_key = init_ca(Path("certs"))
    crt, key = issue_cert(Path("certs"), "runner-1", ["127.0.0.1", "runner-1"], Path("out"))

Keys are written 0600 and never exist with a wider mode; existing files are
kept unless ``force``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fnlb.logs import kv
from fnlb.tls._load import TLSConfigError, _load_certs, _load_key, _sans, _spki, _utc

__all__ = ["CA_CERT_FILE", "CA_KEY_FILE", "init_ca", "issue_cert"]

# One logger for the whole package: its lines keep saying logger=fnlb.tls.
log = logging.getLogger("fnlb.tls")

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

# Certificates start a little in the past so that a peer whose clock is slightly
# behind ours does not reject a certificate minted a second ago.
_CLOCK_SKEW = timedelta(minutes=5)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def _check_targets(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise TLSConfigError(f"{path} already exists; pass --force to overwrite it")


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` so that ``path`` never exists with a mode wider than ``mode``.

    Without force, O_EXCL refuses an existing file atomically. With force, the new
    content goes to a private temporary file that is renamed over ``path``, so a
    process reloading the file sees either the old or the new content, never half.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    target = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp") if force else path
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise TLSConfigError(f"{path} already exists; pass --force to overwrite it") from None
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot create it: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message itself and take no separate hash.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _validity(
    days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    if days <= 0:
        raise TLSConfigError(f"days must be positive, got {days}")
    now = datetime.now(UTC)
    start = _utc(not_before) if not_before is not None else now - _CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else now + timedelta(days=days)
    if end <= start:
        raise TLSConfigError(
            f"not_after {end.isoformat()} must be later than not_before {start.isoformat()}"
        )
    return start, end


def init_ca(
    out_dir: Path, *, name: str = "fnlb-dev-ca", days: int = 3650, force: bool = False
) -> tuple[Path, Path]:
    """Create a self-signed EC P-256 CA: ``out_dir/ca.crt`` and ``out_dir/ca.key`` (0600).

    Returns ``(cert_path, key_path)``. Existing files are kept (TLSConfigError)
    unless ``force``.
    """
    if not name.strip():
        raise TLSConfigError("CA name must not be empty")
    cert_path, key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    _check_targets([cert_path, key_path], force)
    start, end = _validity(days, None, None)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    except ValueError as e:  # X.509 allows 1-64 characters in a common name
        raise TLSConfigError(f"CA name {name!r}: {e}") from None
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        # path_length=0: this CA signs leaf certificates only, never other CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    log.info(
        "created CA",
        extra=kv(
            cert=cert_path,
            key=key_path,
            subject=cert.subject.rfc4514_string(),
            not_after=end.isoformat(),
        ),
    )
    return cert_path, key_path


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    ca_cert = _load_certs(cert_path, "CA")[0]
    ca_key = _load_key(key_path)
    if not isinstance(
        ca_key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise TLSConfigError(f"key file {key_path}: this key type cannot sign certificates")
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise TLSConfigError(f"key file {key_path}: does not match CA certificate {cert_path}")
    try:
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise TLSConfigError(f"CA file {cert_path}: not a CA certificate (no CA:true)")
    return ca_cert, ca_key


def _parse_sans(sans: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(sans, str):
        # A lone string would otherwise become one SAN per character.
        sans = [sans]
    names: list[x509.GeneralName] = []
    for raw in sans:
        san = raw.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
            continue
        except ValueError:
            pass
        if not (san.isascii() and len(san) <= 253 and _DNS_NAME.fullmatch(san)):
            raise TLSConfigError(f"SAN {raw!r}: not an IP address or a DNS name")
        names.append(x509.DNSName(san.lower()))
    unique = list(dict.fromkeys(names))
    if not unique:
        raise TLSConfigError("at least one SAN (host name or IP address) is required")
    return unique


def issue_cert(
    ca_dir: Path,
    name: str,
    sans: Sequence[str],
    out_dir: Path,
    *,
    days: int = 825,
    force: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path]:
    """Issue ``out_dir/NAME.crt`` and ``NAME.key`` (0600) from the CA in ``ca_dir``.

    The certificate (EC P-256, CN=name) is usable as server *and* client
    certificate. Each SAN that parses as an IP address becomes an IP SAN, any
    other a DNS SAN; gRPC checks the target host against these, not the CN.

        issue_cert(Path("ca"), "runner-1", ["127.0.0.1", "runner-1.local"], Path("out"))
    """
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise TLSConfigError(
            f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the files)"
        )
    if name == "ca":
        raise TLSConfigError("name 'ca' is reserved for the CA's own files")
    general_names = _parse_sans(sans)
    start, end = _validity(days, not_before, not_after)
    cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    _check_targets([cert_path, key_path], force)
    ca_cert, ca_key = _load_ca(ca_dir)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _signing_hash(ca_key))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    log.info(
        "issued certificate",
        extra=kv(
            cert=cert_path, key=key_path, sans=",".join(_sans(cert)), not_after=end.isoformat()
        ),
    )
    return cert_path, key_path
