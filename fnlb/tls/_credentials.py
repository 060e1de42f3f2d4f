"""gRPC credentials from validated material, and credentials that follow their files.

    reloading = ReloadingServerCredentials(files, require_client_auth=True)
    server.add_secure_port(addr, reloading.credentials())

``ReloadingServerCredentials`` and ``ClientTLS`` pick up replaced files for new
connections without a restart; a replacement that does not load is logged and
the previous material stays in use.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from fnlb.logs import kv
from fnlb.tls._load import TLSConfigError, TLSFiles, TLSMaterial

__all__ = ["ClientTLS", "ReloadingServerCredentials", "channel_credentials",
           "server_credentials"]

# One logger for the whole package: its lines keep saying logger=fnlb.tls.
log = logging.getLogger("fnlb.tls")


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
