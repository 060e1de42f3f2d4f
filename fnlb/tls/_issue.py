"""Certificates and gRPC credentials: a dev CA, issued certs, validated loading, reload.

    ca_crt, ca_key = init_ca(Path("certs"))                      # fnlb certs init
    crt, key = issue_cert(Path("certs"), "runner-1", ["127.0.0.1", "runner-1"], Path("out"))
    material = TLSFiles(cert=crt, key=key, ca=ca_crt).load()      # TLSConfigError if unusable
    server.add_secure_port(addr, server_credentials(material, require_client_auth=True))

Loading checks up front what a TLS handshake would otherwise report much later and
much less clearly (an expired certificate, a key that belongs to another
certificate, a certificate from another CA). ``ReloadingServerCredentials`` and
``ClientTLS`` pick up replaced files for new connections without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fnlb.logs import kv

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

# One logger for the whole package: its lines keep saying logger=fnlb.tls.
log = logging.getLogger("fnlb.tls")

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

# Certificates start a little in the past so that a peer whose clock is slightly
# behind ours does not reject a certificate minted a second ago.
_CLOCK_SKEW = timedelta(minutes=5)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


class TLSConfigError(ValueError):
    """Expected: TLS files or settings are unusable; the message names the file and the cause."""


# --------------------------------------------------------------------------- material


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


# --------------------------------------------------------------------------- minting


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
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
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


# --------------------------------------------------------------------------- gRPC


def server_credentials(material: TLSMaterial, require_client_auth: bool) -> grpc.ServerCredentials:
    """Static server credentials; with ``require_client_auth`` clients need a cert from the CA."""
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem if require_client_auth else None,
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    material: TLSMaterial | None, ca_only: bytes | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: present ``material``'s cert and trust its CA (mutual TLS).

    ``ca_only`` trusts that CA bundle instead (with ``material=None``: server-only
    TLS, no client certificate). With neither, gRPC's default root store is used.
    """
    roots = ca_only if ca_only is not None else (material.ca_pem if material else None)
    if material is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


class _Watched:
    """TLSFiles plus the last good material; re-loads only when the files changed."""

    def __init__(self, files: TLSFiles, side: str) -> None:
        self.files = files
        self._side = side
        # grpc core calls the server fetcher from its own threads.
        self._lock = threading.Lock()
        self._seen = files._signature()
        self.material = files.load()
        self.generation = 0

    def check(self, force: bool = False) -> bool:
        """Return True when new, valid material replaced the current one."""
        with self._lock:
            sig = self.files._signature()
            if sig == self._seen and not force:
                return False
            # Remember the signature even when loading fails, so that a bad file
            # is reported once rather than on every handshake; any later change
            # to the files (e.g. the matching key arriving) is tried again.
            self._seen = sig
            try:
                material = self.files.load()
            except TLSConfigError as e:
                log.warning(
                    "tls reload failed; keeping the previous certificate",
                    extra=kv(side=self._side, cause=str(e), serving_serial=self.material.serial),
                )
                return False
            if material == self.material:
                return False
            self.material = material
            self.generation += 1
        log.info(
            "tls certificate reloaded",
            extra=kv(
                side=self._side,
                cert=self.files.cert,
                subject=material.subject,
                sans=",".join(material.sans),
                serial=material.serial,
                not_after=material.not_after.isoformat(),
            ),
        )
        return True


class ReloadingServerCredentials:
    """Server credentials whose certificate, key and client CA follow the files.

    grpc core asks for the certificate configuration before every new handshake;
    when the files changed and load cleanly, new connections get the new
    material, while invalid files are logged and the old material stays in use.
    Established connections keep the certificate they were made with.

        reloading = ReloadingServerCredentials(files, require_client_auth=True)
        server.add_secure_port("0.0.0.0:443", reloading.credentials())
        loop.add_signal_handler(signal.SIGHUP, reloading.reload)

    The files are loaded once here: invalid files at startup raise TLSConfigError.
    """

    def __init__(self, files: TLSFiles, *, require_client_auth: bool) -> None:
        self._watched = _Watched(files, "server")
        self.require_client_auth = require_client_auth

    @property
    def files(self) -> TLSFiles:
        return self._watched.files

    @property
    def material(self) -> TLSMaterial:
        """The material new connections are served with now."""
        return self._watched.material

    def reload(self) -> bool:
        """Re-read the files now even if they look unchanged; True if the material changed."""
        return self._watched.check(force=True)

    def _config(self, material: TLSMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)],
            root_certificates=material.ca_pem if self.require_client_auth else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Fresh grpc credentials for one ``add_secure_port`` call.

        Make one per port: grpc keeps a configuration per listening port, and
        binding a second port with the same dynamic credentials fails ("Failed
        loading SSL server credentials from fetcher"). Each object remembers what
        it last handed to its port. grpc calls the fetcher on its own threads,
        not on the asyncio loop, so reading the files there does not block it.
        """
        material = self.material
        served = [self._watched.generation]

        def fetch() -> Any:
            try:
                self._watched.check()
                if self._watched.generation == served[0]:
                    return None
                # Read generation before material: a concurrent reload then at
                # worst makes the next handshake fetch once more.
                served[0] = self._watched.generation
                return self._config(self._watched.material)
            except Exception:
                # An exception would only be logged by grpc; say which files.
                log.exception(
                    "tls certificate fetch failed; keeping the previous certificate",
                    extra=kv(cert=self.files.cert),
                )
                return None

        return grpc.dynamic_ssl_server_credentials(
            self._config(material),
            fetch,
            require_client_authentication=self.require_client_auth,
        )


class ClientTLS:
    """Client mutual-TLS credentials that follow the files for new channels.

    ``credentials()`` is cheap when nothing changed (it stats three files);
    after a change it returns credentials with the new material, so channels
    built from then on use it. Existing channels keep what they were built
    with; ``GrpcRunner`` watches ``generation`` and re-dials its runner.

        tls = ClientTLS(TLSFiles(cert=crt, key=key, ca=ca))
        channel = grpc.aio.secure_channel(addr, tls.credentials())
    """

    def __init__(self, files: TLSFiles) -> None:
        self._watched = _Watched(files, "client")
        self._creds: grpc.ChannelCredentials = channel_credentials(self._watched.material)
        self._creds_generation = 0
        self._lock = threading.Lock()
        self._looked_at = time.monotonic()

    @property
    def files(self) -> TLSFiles:
        return self._watched.files

    @property
    def material(self) -> TLSMaterial:
        return self._watched.material

    def reload(self) -> bool:
        """Re-read the files now even if they look unchanged; True if the material changed."""
        return self._watched.check(force=True)

    @property
    def generation(self) -> int:
        """Bumped each time new material replaced the old (a file change or ``reload``)."""
        return self._watched.generation

    def refresh(self, min_interval: float = 1.0) -> int:
        """Look at the files if ``min_interval`` seconds passed since the last look; the generation.

        Cheap enough to call from every runner's health poll: with 1,000
        runners the files are still stat'ed about once a second.
        """
        now = time.monotonic()
        if now - self._looked_at >= min_interval:
            self._looked_at = now
            self._watched.check()
        return self._watched.generation

    def credentials(self) -> grpc.ChannelCredentials:
        self._watched.check()
        with self._lock:
            if self._creds_generation != self._watched.generation:
                self._creds_generation = self._watched.generation
                self._creds = channel_credentials(self._watched.material)
            return self._creds
