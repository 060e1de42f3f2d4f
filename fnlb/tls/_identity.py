"""Who a TLS peer is: the names in the client certificate it presented.

    cert = peer_certificate(context.auth_context())   # None: no client certificate
    cert.identities            # ("runner-1", "spiffe://fnlb/runner-1", "runner-1")
    cert.owns_host("10.0.0.7") # True if 10.0.0.7 is one of its IP SANs

Identities are what Envoy's RBAC (``principal_name``) and gRPC's authorization
policies (``principals``) match: the certificate's SAN DNS names and URIs and
its subject CN, so ``fnlb certs issue --name admin --san admin`` makes the
identity ``admin``. IP SANs name a host, not a principal: they count only for
``owns_host`` (may this peer register a runner at that address?).

The names come from the PEM certificate grpc puts in the auth context
(``x509_pem_cert``), parsed with ``cryptography`` so DNS, URI and IP SANs are
told apart; without it, grpc's ``x509_common_name`` and
``x509_subject_alternative_name`` are used as identities.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["PeerCertificate", "peer_certificate"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names are shown in refusals and logs: a hostile certificate must not make
# them huge (a SAN may be long, and there may be many).
_SHOW_NAMES = 8
_SHOW_CHARS = 128


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The names in a peer's certificate."""

    common_name: str = ""
    dns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()

    @property
    def identities(self) -> tuple[str, ...]:
        """SAN DNS names, SAN URIs, then the CN; each once."""
        names = [*self.dns, *self.uris, *([self.common_name] if self.common_name else [])]
        return tuple(dict.fromkeys(names))

    def owns_host(self, host: str) -> bool:
        """Whether ``host`` (a name, an IP, or ``[v6]``) is one of the certificate's SANs.

        DNS names compare as TLS does: case-insensitively, and a ``*.example``
        SAN covers exactly one more leftmost label. A certificate is what the LB
        checks when it dials the runner, so a peer that owns a host could serve
        there.
        """
        text = host.strip("[]")
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            name = text.rstrip(".").lower()
            return any(_dns_match(san, name) for san in self.dns)
        return ip in self.ips

    def describe(self) -> str:
        """``CN=runner-1 SAN=DNS:runner-1,IP:10.0.0.7`` (bounded in length)."""
        sans = ([f"DNS:{n}" for n in self.dns] + [f"URI:{u}" for u in self.uris]
                + [f"IP:{ip}" for ip in self.ips])
        more = f",+{len(sans) - _SHOW_NAMES} more" if len(sans) > _SHOW_NAMES else ""
        shown = ",".join(_clip(s) for s in sans[:_SHOW_NAMES]) + more
        return f"CN={_clip(self.common_name)} SAN={shown or '(none)'}"


def _clip(text: str) -> str:
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "..."


def _dns_match(san: str, name: str) -> bool:
    san = san.rstrip(".").lower()
    if san.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == san[2:]
    return san == name


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The peer's certificate names from ``ServicerContext.auth_context()``; None without one."""
    pem = _first(auth_context, "x509_pem_cert")
    if pem:
        parsed = _parse_pem(pem)
        if parsed is not None:
            return parsed
    cn = _first(auth_context, "x509_common_name")
    sans = tuple(v.decode("utf-8", "replace") for v in
                 auth_context.get("x509_subject_alternative_name", ()))
    if not cn and not sans:
        return None
    return PeerCertificate(common_name=cn.decode("utf-8", "replace") if cn else "", dns=sans)


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> bytes:
    for value in auth_context.get(key, ()):
        return bytes(value)
    return b""


# Registration heartbeats come every few seconds from every runner, each with
# the same certificate: parse each certificate once.
@functools.lru_cache(maxsize=1024)
def _parse_pem(pem: bytes) -> PeerCertificate | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return PeerCertificate(common_name=str(cn))
    return PeerCertificate(
        common_name=cn if isinstance(cn, str) else cn.decode("utf-8", "replace"),
        dns=tuple(san.get_values_for_type(x509.DNSName)),
        uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        ips=tuple(ip for ip in san.get_values_for_type(x509.IPAddress)
                  if isinstance(ip, IPAddress)))
