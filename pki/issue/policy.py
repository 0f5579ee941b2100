"""Issuance policy: a chain of pure checks with stable reason codes.

``evaluate`` takes the facts of a verified CSR, the profile, the operator's
request and the time, and either returns the ``CertificatePlan`` (exactly what
the certificate will say) or raises ``PolicyViolation`` for the first rule the
request breaks. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.x509.oid import ExtensionOID

from pki.errors import InvalidInput, PolicyViolation
from pki.issue.csr import CsrFacts
from pki.issue.profiles import DEVICE, THING_NAME_PATTERN, CertificateProfile
from pki.model import IssueRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# X.520 upper bound of a common name (the device's identity for brokers and endpoints).
MAX_COMMON_NAME = 64
# The broker takes a device's CN as its username; fleetpki's own service users (admin,
# rotation) have this prefix, so no device may be named like them.
RESERVED_THING_PREFIX = "fleetpki-"
# fleetpki's own short-lived client identity for canary handshakes against the relying
# parties (no broker permissions; left out of the fleet's counts and plans)
PROBE_THING = "fleetpki-probe"

# Certificates start a few minutes in the past so devices with a slightly slow clock accept them.
BACKDATE = dt.timedelta(minutes=5)

_THING_RE = re.compile(f"^{THING_NAME_PATTERN}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ALLOWED_CSR_EXTENSIONS = frozenset(
    {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string,
        ExtensionOID.BASIC_CONSTRAINTS.dotted_string,
        ExtensionOID.KEY_USAGE.dotted_string,
        ExtensionOID.EXTENDED_KEY_USAGE.dotted_string,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string,
    }
)


@dataclass(frozen=True)
class PolicySettings:
    """Operator-tunable policy knobs (stored in the home's config.json)."""

    thing_uri_prefix: str = "https://fleetpki.local/things/"
    allow_wildcard: bool = False


@dataclass(frozen=True)
class Violation:
    reason: str
    message: str


@dataclass(frozen=True)
class CertificatePlan:
    """What the certificate will contain, decided before anything is signed."""

    profile: CertificateProfile
    thing: str | None
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    uris: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class PolicyContext:
    facts: CsrFacts
    profile: CertificateProfile
    request: IssueRequest
    settings: PolicySettings
    now: dt.datetime
    ca_not_after: dt.datetime

    @property
    def is_device(self) -> bool:
        return self.profile.name == DEVICE.name

    @property
    def thing_uri(self) -> str:
        return f"{self.settings.thing_uri_prefix}{self.request.name}"

    @property
    def days(self) -> int:
        return self.request.days if self.request.days is not None else self.profile.default_days


Check = Callable[[PolicyContext], Violation | None]


def check_name(ctx: PolicyContext) -> Violation | None:
    if ctx.request.probe:  # fleetpki's own probe: that one reserved name, nothing else
        if (ctx.profile.name, ctx.request.name) != (DEVICE.name, PROBE_THING):
            return Violation("reserved-thing-name", "a probe is the device 'fleetpki-probe'")
        return None
    return name_violation(ctx.profile.name, ctx.request.name)


def name_violation(profile: str, name: str) -> Violation | None:
    """What is wrong with ``name`` as the thing (device profile) or server name, if
    anything: checked before a key is made for it, and again by the policy."""
    if profile == DEVICE.name:
        if not _THING_RE.fullmatch(name):
            return Violation(
                "invalid-thing-name",
                f"thing name {name!r} must be 1-128 characters of A-Z a-z 0-9 : _ -",
            )
        if len(name) > MAX_COMMON_NAME:
            return Violation(
                "invalid-thing-name",
                f"thing name {name[:20]!r}... is {len(name)} characters; it is the certificate's "
                f"common name, which holds at most {MAX_COMMON_NAME}",
            )
        if name.lower().startswith(RESERVED_THING_PREFIX):
            return Violation(
                "reserved-thing-name",
                f"thing name {name!r} starts with {RESERVED_THING_PREFIX!r}, which is reserved "
                "for fleetpki's own service identities on the broker",
            )
    elif not name or len(name) > 64 or not name.isprintable():
        return Violation("invalid-name", f"server name {name!r} must be 1-64 printable characters")
    elif name.lower().startswith(RESERVED_THING_PREFIX):
        return Violation(
            "reserved-thing-name",
            f"server name {name!r} starts with {RESERVED_THING_PREFIX!r}, which is reserved "
            "for fleetpki's own identities",
        )
    return None


def check_key(ctx: PolicyContext) -> Violation | None:
    key = ctx.facts.key
    profile = ctx.profile
    if key.algorithm == "ec":
        if key.curve not in profile.ec_curves:
            return Violation(
                "unsupported-key",
                f"key EC {key.curve} is not accepted; use EC P-256 or P-384, or RSA >= 2048",
            )
        return None
    if key.algorithm == "rsa":
        if key.bits < profile.rsa_min_bits:
            return Violation(
                "weak-key",
                f"key RSA {key.bits} is too weak; RSA keys need at least "
                f"{profile.rsa_min_bits} bits",
            )
        if key.bits > profile.rsa_max_bits:
            return Violation(
                "unsupported-key", f"key RSA {key.bits} is larger than {profile.rsa_max_bits} bits"
            )
        if key.rsa_exponent != 65537:
            return Violation(
                "weak-key", f"RSA public exponent {key.rsa_exponent} is not accepted; use 65537"
            )
        return None
    return Violation(
        "unsupported-key",
        f"key type {key.describe()} is not accepted; use EC P-256 or P-384, or RSA >= 2048",
    )


def check_not_ca(ctx: PolicyContext) -> Violation | None:
    if ctx.facts.requests_ca:
        return Violation(
            "ca-requested",
            f"CSR asks for CA:true; {ctx.profile.name} certificates can never be CAs",
        )
    usage = ctx.facts.key_usage
    if usage is not None and (usage.key_cert_sign or usage.crl_sign):
        return Violation(
            "ca-requested",
            "CSR asks for keyCertSign/cRLSign key usage, which only CA certificates may have",
        )
    return None


def check_extensions(ctx: PolicyContext) -> Violation | None:
    for oid in ctx.facts.extension_oids:
        if oid not in _ALLOWED_CSR_EXTENSIONS:
            return Violation(
                "extension-not-allowed",
                f"CSR requests extension {_oid_name(oid)}, which the {ctx.profile.name} "
                "profile does not allow",
            )
    requested_eku = ctx.facts.eku
    if requested_eku is not None:
        allowed = {oid.dotted_string for oid in ctx.profile.eku}
        extra = [oid for oid in requested_eku if oid not in allowed]
        if extra:
            return Violation(
                "eku-not-allowed",
                f"CSR asks for extended key usage {', '.join(_oid_name(o) for o in extra)}; "
                f"the {ctx.profile.name} profile allows only "
                f"{', '.join(_oid_name(o.dotted_string) for o in ctx.profile.eku)}",
            )
    return None


def check_common_name(ctx: PolicyContext) -> Violation | None:
    cns = ctx.facts.common_names
    if len(cns) > 1:
        return Violation("cn-mismatch", f"CSR has {len(cns)} common names; it may have at most one")
    if cns and cns[0] != ctx.request.name:
        what = "thing name" if ctx.is_device else "server name"
        return Violation(
            "cn-mismatch",
            f"CSR common name {cns[0]!r} does not match the {what} {ctx.request.name!r}",
        )
    return None


def check_sans(ctx: PolicyContext) -> Violation | None:
    facts = ctx.facts
    if facts.other_sans:
        return Violation(
            "san-not-allowed", f"CSR asks for SAN {facts.other_sans[0]}, which is never allowed"
        )
    return _device_sans(ctx) if ctx.is_device else _server_sans(ctx)


def _device_sans(ctx: PolicyContext) -> Violation | None:
    facts = ctx.facts
    if facts.dns_names or facts.ip_addresses:
        first = (facts.dns_names or tuple(str(i) for i in facts.ip_addresses))[0]
        return Violation(
            "san-not-allowed",
            f"CSR asks for SAN {first}; device certificates carry only the thing URI",
        )
    for uri in facts.uris:
        if uri != ctx.thing_uri:
            return Violation(
                "san-not-allowed",
                f"CSR asks for SAN URI {uri}; this device may only have {ctx.thing_uri}",
            )
    return None


def _server_sans(ctx: PolicyContext) -> Violation | None:
    if ctx.facts.uris:
        return Violation(
            "san-not-allowed",
            f"CSR asks for SAN URI {ctx.facts.uris[0]}; server certificates "
            "carry only DNS and IP names",
        )
    dns, ips = server_names(ctx.request)
    return _requested_names(ctx, dns, ips) or _unrequested_names(ctx.facts, dns, ips)


def _requested_names(
    ctx: PolicyContext, dns: Sequence[str], ips: Sequence[IPAddress]
) -> Violation | None:
    """The names the operator asked for: DNS names well formed, IPs that name a host."""
    allow_wildcard = ctx.profile.allow_wildcard or ctx.settings.allow_wildcard
    for name in dns:
        violation = _check_dns_name(name, allow_wildcard=allow_wildcard)
        if violation:
            return violation
    for ip in ips:
        if ip.is_unspecified or ip.is_multicast:
            return Violation("san-not-allowed", f"IP address {ip} cannot identify a server")
    if not dns and not ips:
        return Violation(
            "san-required",
            f"server name {ctx.request.name!r} is neither a DNS name nor an IP address, and "
            "server certificates need at least one (give --dns / --ip)",
        )
    return None


def _unrequested_names(
    facts: CsrFacts, dns: Sequence[str], ips: Sequence[IPAddress]
) -> Violation | None:
    """A CSR's names the operator did not ask for are refused, never silently dropped."""
    for name in facts.dns_names:
        if name.lower() not in dns:
            return Violation(
                "san-not-allowed",
                f"CSR asks for DNS name {name} which was not requested (add --dns {name})",
            )
    for ip in facts.ip_addresses:
        if ip not in ips:
            return Violation(
                "san-not-allowed",
                f"CSR asks for IP address {ip} which was not requested (add --ip {ip})",
            )
    return None


def check_validity(ctx: PolicyContext) -> Violation | None:
    days = ctx.days
    if days <= 0:
        raise InvalidInput(f"--days must be a positive number of days, not {days}")
    if days > ctx.profile.max_days:
        return Violation(
            "validity-too-long",
            f"{days} days is longer than the {ctx.profile.name} profile's maximum of "
            f"{ctx.profile.max_days} days",
        )
    not_after = ctx.now + dt.timedelta(days=days)
    if not_after > ctx.ca_not_after:
        return Violation(
            "outlives-ca",
            f"a {days}-day certificate would outlive the issuing CA (valid until "
            f"{ctx.ca_not_after:%Y-%m-%d}); ask for fewer days or roll the CA over",
        )
    return None


CHECKS: Sequence[Check] = (
    check_name,
    check_key,
    check_not_ca,
    check_extensions,
    check_common_name,
    check_sans,
    check_validity,
)


def first_violation(ctx: PolicyContext, checks: Sequence[Check] = CHECKS) -> Violation | None:
    for check in checks:
        violation = check(ctx)
        if violation is not None:
            return violation
    return None


# scheme ":" then printable characters without spaces: https://..., urn:..., spiffe://...
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")


def evaluate(
    facts: CsrFacts,
    profile: CertificateProfile,
    request: IssueRequest,
    settings: PolicySettings,
    now: dt.datetime,
    ca_not_after: dt.datetime,
) -> CertificatePlan:
    ctx = PolicyContext(facts, profile, request, settings, now, ca_not_after)
    if ctx.is_device and not _ABSOLUTE_URI.fullmatch(settings.thing_uri_prefix):
        raise InvalidInput(
            f"config.json policy.thing_uri_prefix {settings.thing_uri_prefix!r} is not an "
            "absolute URI without spaces (e.g. https://fleet.example/things/); fix it before "
            "issuing device certificates"
        )
    violation = first_violation(ctx)
    if violation is not None:
        raise PolicyViolation(violation.reason, violation.message)
    if ctx.is_device:
        dns: tuple[str, ...] = ()
        ips: tuple[IPAddress, ...] = ()
        uris: tuple[str, ...] = (ctx.thing_uri,)
    else:
        dns, ips = server_names(request)
        uris = ()
    return CertificatePlan(
        profile=profile,
        thing=request.name if ctx.is_device else None,
        common_name=request.name,
        dns_names=dns,
        ip_addresses=ips,
        uris=uris,
        not_before=now - BACKDATE,
        not_after=now + dt.timedelta(days=ctx.days),
    )


def server_names(request: IssueRequest) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """The SANs of a server certificate: ``--dns``/``--ip``, else the name itself.

    The name is used as a DNS name when no SAN was given and it looks like a host name,
    or as an IP address when it is one.
    """
    dns = tuple(dict.fromkeys(d.lower() for d in request.dns_names))
    ips = tuple(dict.fromkeys(request.ip_addresses))
    if dns or ips:
        return dns, ips
    try:
        return (), (ipaddress.ip_address(request.name),)
    except ValueError:
        pass
    if "." in request.name or _LABEL_RE.fullmatch(request.name.lower()):
        return (request.name.lower(),), ()
    return (), ()


def _check_dns_name(name: str, *, allow_wildcard: bool) -> Violation | None:
    if not name.isascii():
        return Violation(
            "invalid-dns-name", f"DNS name {name!r} is not ASCII; use its punycode (xn--) form"
        )
    if len(name) > 253 or name.endswith("."):
        return Violation("invalid-dns-name", f"DNS name {name!r} is not a valid host name")
    labels = name.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            return Violation(
                "wildcard-not-allowed",
                f"wildcard DNS name {name} is not allowed (set allow_wildcard in config.json)",
            )
        if len(labels) < 3:
            return Violation(
                "invalid-dns-name", f"wildcard {name} must cover a subdomain, e.g. *.api.example"
            )
        labels = labels[1:]
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            return Violation("invalid-dns-name", f"DNS name {name!r} is not a valid host name")
    if all(label.isdigit() for label in labels):
        return Violation(
            "invalid-dns-name", f"{name!r} looks like an IP address; pass it with --ip"
        )
    return None


_OID_NAMES = {
    "1.3.6.1.5.5.7.3.1": "serverAuth",
    "1.3.6.1.5.5.7.3.2": "clientAuth",
    "1.3.6.1.5.5.7.3.3": "codeSigning",
    "1.3.6.1.5.5.7.3.4": "emailProtection",
    "1.3.6.1.5.5.7.3.8": "timeStamping",
    "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "2.5.29.30": "nameConstraints",
    "2.5.29.32": "certificatePolicies",
    "2.5.29.31": "cRLDistributionPoints",
    "1.3.6.1.5.5.7.1.1": "authorityInfoAccess",
    "1.3.6.1.5.5.7.1.24": "TLS feature",
}


def _oid_name(dotted: str) -> str:
    return _OID_NAMES.get(dotted, dotted)
