"""Who may do what: allow-lists of principals, decided by pure functions.

As Envoy's RBAC filter and gRPC's authorization policies do, a call is allowed
only when its caller matches a rule; identities come from the client
certificate (SAN DNS names and URIs, and the CN: ``fnlb.tls.peer_certificate``).
One entry of ``--admin-allow``, ``--register-allow`` or the runner stub's
``--close-allow`` is a *principal pattern*:

    admin                 an identity, exactly
    ops-*   *.ops.example an identity with that prefix / suffix (gRPC authz's wildcards)
    *                     any client certificate the CA signed (never a default)
    ip:10.0.0.0/8         the caller's IP address, with or without a certificate
    loopback              a caller on 127.0.0.0/8 or ::1

``AdminPolicy.decide`` is the Admin service's rule table, ``close_decision``
a runner's rule for its Close RPC; refusals name the caller and the rule
(``Decision.reason``), for a PERMISSION_DENIED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fnlb.errors import ConfigError

if TYPE_CHECKING:
    from fnlb.tls import PeerCertificate

__all__ = ["ADMIN_METHODS", "AdminPolicy", "Caller", "Decision", "Pattern",
           "caller_of", "close_decision", "parse_pattern", "parse_patterns", "split_list"]

ADMIN_METHODS = ("ListRunners", "AddRunner", "RemoveRunner", "DrainRunner")
# What --register-allow grants: a runner's membership, never a drain.
_REGISTRATION_METHODS = ("AddRunner", "RemoveRunner")
_MAX_PATTERN = 1024
SELF = "self"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called: the peer's address and, over mTLS, its certificate's names."""

    ip: IPAddress | None = None
    # A unix socket: the LB's private endpoints (a worker's Admin), reachable
    # only by the LB's own user.
    unix: bool = False
    cert: PeerCertificate | None = None

    @property
    def identities(self) -> tuple[str, ...]:
        return self.cert.identities if self.cert is not None else ()

    def describe(self) -> str:
        """``identity 'admin' (CN=admin SAN=DNS:admin) from 127.0.0.1``, for refusals and logs."""
        where = "a unix socket" if self.unix else str(self.ip) if self.ip else "an unknown address"
        if self.cert is None:
            return f"a caller without a client certificate from {where}"
        ids = self.identities
        name = f"identity {ids[0]!r}" if ids else "a certificate without names"
        return f"{name} ({self.cert.describe()}) from {where}"


def caller_of(context: Any) -> Caller:
    """The ``Caller`` of a grpc.aio ``ServicerContext`` (its peer and auth context)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    ip: IPAddress | None = None
    if kind in ("ipv4", "ipv6"):
        host = unquote(rest.rpartition(":")[0]).strip("[]").split("%")[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
    auth = context.auth_context() or {}
    cert = None
    if "x509_pem_cert" in auth or "x509_common_name" in auth:
        # Imported here: cryptography is slow to import and only TLS needs it.
        from fnlb.tls import peer_certificate

        cert = peer_certificate(auth)
    return Caller(ip=ip, unix=kind == "unix", cert=cert)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One principal pattern (see the module doc); ``text`` is how it was written."""

    text: str
    kind: str  # "identity" | "ip" | "loopback"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def matches(self, caller: Caller) -> bool:
        if self.kind == "loopback":
            return caller.ip is not None and caller.ip.is_loopback
        if self.kind == "ip":
            return caller.ip is not None and self.network is not None and \
                caller.ip.version == self.network.version and caller.ip in self.network
        return any(self.matches_identity(i) for i in caller.identities)

    def matches_identity(self, identity: str) -> bool:
        if self.kind != "identity":
            return False
        t = self.text
        if t == "*":
            return True
        if t.endswith("*"):
            return identity.startswith(t[:-1])
        if t.startswith("*"):
            return identity.endswith(t[1:])
        return identity == t


LOOPBACK = Pattern("loopback", "loopback")


def split_list(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a, b,c"`` (or already a list) -> ``("a", "b", "c")``; ``none`` -> ``()``."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    return () if out == ("none",) else out


def parse_pattern(text: str, flag: str) -> Pattern:
    t = text.strip()
    if not t or len(t) > _MAX_PATTERN or any(c.isspace() or not c.isprintable() for c in t):
        raise ConfigError(f"{flag}: {t[:80]!r} is not a principal (an identity, a "
                          f"PREFIX* or *SUFFIX pattern, ip:CIDR or loopback)")
    if t == "loopback":
        return LOOPBACK
    if t.startswith("ip:"):
        try:
            net = ipaddress.ip_network(t[3:].strip("[]"), strict=False)
        except ValueError:
            raise ConfigError(f"{flag}: {t!r}: expected ip:CIDR, e.g. ip:10.0.0.0/8") from None
        return Pattern(t, "ip", net)
    if t != "*" and ("*" in t[1:-1] or (t.startswith("*") and t.endswith("*"))):
        raise ConfigError(f"{flag}: {t!r}: '*' may only start or end a pattern "
                          "(PREFIX* or *SUFFIX), or stand alone")
    return Pattern(t, "identity")


def parse_patterns(items: Iterable[str], flag: str) -> tuple[Pattern, ...]:
    return tuple(parse_pattern(i, flag) for i in items)


def _listed(patterns: tuple[Pattern, ...]) -> str:
    return ",".join(p.text for p in patterns) or "nobody"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # The rule that allowed the call, or why none did: what a refusal says.
    reason: str
    # Allowed only for an address: decide again with the call's host.
    needs_address: bool = False


@dataclass(frozen=True)
class AdminPolicy:
    """Who may call ``fnlb.v1.Admin``, and what for.

    * ``admin`` (``--admin-allow``): every method. Default: loopback callers
      when no client CA is set; nobody when one is (never "any certificate").
    * ``registrars`` (``--register-allow ID``): AddRunner and RemoveRunner of
      any address (e.g. a controller that registers runners), never a drain.
    * ``self_register`` (``--register-allow self`` or ``self:ID``): a
      certificate may AddRunner (with ``ttl_s``: a heartbeat) and RemoveRunner
      only its own address: the host must be one of its SANs (DNS or IP).
    * A caller on a unix socket is the LB's supervisor (workers' private
      endpoints sit in a directory only the LB's user can enter).
    """

    admin: tuple[Pattern, ...] = (LOOPBACK,)
    registrars: tuple[Pattern, ...] = ()
    self_register: tuple[Pattern, ...] = ()
    # The rules as refusals name them.
    admin_source: str = "--admin-allow (default without --front-tls-ca: loopback)"
    register_source: str = "--register-allow (none)"

    @classmethod
    def from_flags(cls, admin_allow: Iterable[str] | None, register_allow: Iterable[str],
                   *, client_ca: bool) -> AdminPolicy:
        """The policy of ``--admin-allow`` (None: not given) and ``--register-allow``.

        Identity patterns need client certificates: without ``client_ca`` they
        could never match, which is a ConfigError rather than a silent no.
        """
        admin: tuple[Pattern, ...]
        if admin_allow is None:
            admin = () if client_ca else (LOOPBACK,)
            source = ("--admin-allow (default with --front-tls-ca: nobody)" if client_ca
                      else "--admin-allow (default without --front-tls-ca: loopback)")
        else:
            admin = parse_patterns(admin_allow, "--admin-allow")
            source = f"--admin-allow ({_listed(admin)})"
        registrars: list[Pattern] = []
        self_register: list[Pattern] = []
        by_identity: list[str] = []  # --register-allow entries that need certificates
        register_allow = tuple(register_allow)
        for item in register_allow:
            if item == SELF:
                self_register.append(Pattern("*", "identity"))
            elif item.startswith(SELF + ":"):
                p = parse_pattern(item[len(SELF) + 1:], "--register-allow")
                if p.kind != "identity":
                    raise ConfigError(f"--register-allow {item!r}: self:PATTERN takes an "
                                      "identity pattern (a certificate names its own host)")
                self_register.append(p)
            else:
                p = parse_pattern(item, "--register-allow")
                registrars.append(p)
                if p.kind != "identity":
                    continue
            by_identity.append(item)
        if not client_ca:
            for flag, named in (("--admin-allow", [p.text for p in admin
                                                   if p.kind == "identity"]),
                                ("--register-allow", by_identity)):
                if named:
                    raise ConfigError(
                        f"{flag} {','.join(named)}: identities come from client certificates; "
                        "set --front-tls-ca (or allow callers by address: ip:CIDR, loopback)")
        register_source = f"--register-allow ({','.join(register_allow) or 'none'})"
        return cls(tuple(admin), tuple(registrars), tuple(self_register), source,
                   register_source)

    @property
    def anyone_registers(self) -> bool:
        """Whether some caller besides the admins may add runners."""
        return bool(self.registrars or self.self_register)

    def decide(self, method: str, caller: Caller, host: str | None = None,
               ttl_s: int = 0) -> Decision:
        """May ``caller`` call Admin/``method`` on a runner at ``host``?

        ``host`` None: not known yet. The answer may then be ``needs_address``:
        only a rule bound to the address (self-registration) could allow the
        call; decide again with the host, once the address is parsed.
        """
        if caller.unix:
            return Decision(True, "the LB's private unix socket")
        for p in self.admin:
            if p.matches(caller):
                return Decision(True, f"--admin-allow {p.text}")
        refused = f"{caller.describe()} is not in {self.admin_source}"
        if method not in _REGISTRATION_METHODS:
            return Decision(False, refused)
        for p in self.registrars:
            if p.matches(caller):
                return Decision(True, f"--register-allow {p.text}")
        own = next((p for p in self.self_register if p.matches(caller)), None)
        if own is None or caller.cert is None:
            if self.anyone_registers:
                refused += f", nor in {self.register_source}"
            return Decision(False, refused)
        rule = "--register-allow self" + ("" if own.text == "*" else f":{own.text}")
        if host is None:
            return Decision(False, rule, needs_address=True)
        if not caller.cert.owns_host(host):
            return Decision(False, f"{refused}; {rule} lets it add or remove only its own "
                                   f"address (a host among its SANs), not {host[:260]}")
        if method == "AddRunner" and ttl_s <= 0:
            return Decision(False, f"{rule}: a runner registers itself with ttl_s > 0 "
                                   "(a heartbeat); only --admin-allow may add for good")
        return Decision(True, f"{rule} (its own address)")



def close_decision(caller: Caller, allow: tuple[Pattern, ...], *, tls: bool,
                   allow_insecure: bool = False) -> Decision:
    """May ``caller`` call a runner's ``Close`` (drain it)? The runner stub's rule.

    With TLS only ``--close-allow`` callers (default: nobody; list the LB's
    identity). Without TLS there are no identities: loopback callers, the
    ``--close-allow`` addresses (ip:CIDR), or anyone with ``--allow-insecure-close``.
    """
    for p in allow:
        if p.matches(caller):
            return Decision(True, f"--close-allow {p.text}")
    if tls:
        return Decision(False, f"{caller.describe()} is not in --close-allow "
                               f"({_listed(allow)}); list the LB's identity there")
    if allow_insecure:
        return Decision(True, "--allow-insecure-close")
    if caller.ip is not None and caller.ip.is_loopback:
        return Decision(True, "a loopback caller (no TLS)")
    return Decision(False, f"{caller.describe()}: without TLS only loopback callers may "
                           "drain this runner (--close-allow ip:CIDR or "
                           "--allow-insecure-close to allow more; better: --tls-* and "
                           "--close-allow LB_IDENTITY)")
