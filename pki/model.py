"""Values that cross module boundaries: frozen, checked when made."""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509

from pki.errors import InvalidInput


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


class RevocationReason(enum.StrEnum):
    """RFC 5280 revocation reasons fleetpki accepts (no certificateHold: revocation is final)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"

    @property
    def x509_flag(self) -> x509.ReasonFlags:
        return _X509_FLAGS[self]

    @property
    def aws_name(self) -> str:
        """The string AWS Private CA's ``RevokeCertificate`` expects."""
        return _AWS_NAMES[self]


_X509_FLAGS = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}

_AWS_NAMES = {
    RevocationReason.UNSPECIFIED: "UNSPECIFIED",
    RevocationReason.KEY_COMPROMISE: "KEY_COMPROMISE",
    RevocationReason.CA_COMPROMISE: "CERTIFICATE_AUTHORITY_COMPROMISE",
    RevocationReason.AFFILIATION_CHANGED: "AFFILIATION_CHANGED",
    RevocationReason.SUPERSEDED: "SUPERSEDED",
    RevocationReason.CESSATION_OF_OPERATION: "CESSATION_OF_OPERATION",
    RevocationReason.PRIVILEGE_WITHDRAWN: "PRIVILEGE_WITHDRAWN",
}


class Status(enum.StrEnum):
    """Stored status. ``expired`` is derived from ``not_after`` and the clock, never stored."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"


_SERIAL_RE = re.compile(r"^(0x)?[0-9a-f]+$")


def parse_serial(text: str) -> int:
    """Accept a hex serial as operators paste it: ``0x1A2B``, ``1a:2b``, ``1A 2B``."""
    cleaned = text.strip().lower().replace(":", "").replace(" ", "")
    if not cleaned or not _SERIAL_RE.fullmatch(cleaned):
        raise InvalidInput(f"{text!r} is not a hexadecimal certificate serial number")
    value = int(cleaned.removeprefix("0x"), 16)
    if value <= 0 or value.bit_length() > 160:
        raise InvalidInput(f"{text!r} is not a valid serial (must be 1..20 bytes, positive)")
    return value


def serial_hex(serial: int) -> str:
    """Canonical display form of a serial: lower-case hex, even length, no separators."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


_DURATION_RE = re.compile(r"^\s*(\d{1,15})\s*([smhdwy])\s*$")
MAX_DURATION_DAYS = 36500  # longer than any certificate, CRL or schedule: a typo
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
DURATION_GRAMMAR = "a whole number with a unit: s, m, h, d, w or y (365 days), e.g. 30d or 12h"


def parse_duration(text: str) -> dt.timedelta:
    """``45s``, ``90m``, ``12h``, ``30d``, ``2w``, ``1y`` (365 days); ``0`` alone is zero.

    A bare number is refused: ``30`` could mean seconds, minutes or days."""
    if text.strip() == "0":
        return dt.timedelta(0)
    match = _DURATION_RE.match(text.lower())
    if not match:
        raise InvalidInput(f"{_quoted(text)} is not a duration: use {DURATION_GRAMMAR}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_DAYS * 86400:
        raise InvalidInput(
            f"{_quoted(text)} is too long; durations go up to {MAX_DURATION_DAYS} days (100 years)"
        )
    return dt.timedelta(seconds=seconds)


def _quoted(text: str) -> str:
    """Untrusted text for a one-line message: quoted, control characters escaped, capped."""
    shown = text if len(text) <= 60 else text[:60] + "…"
    return repr(shown)


def isoformat(value: dt.datetime | None) -> str | None:
    """A certificate or CRL time as JSON shows it: RFC 3339, UTC, ``Z``, whole seconds (as
    the certificate itself says)."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_event(value: dt.datetime | None) -> str | None:
    """An event time (issued, revoked, requested, applied...): RFC 3339, UTC, ``Z``, with
    microseconds, so events keep their order."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class IssueRequest:
    """What an operator asks for: a profile, an identity and a CSR."""

    profile: str
    name: str
    csr_pem: bytes
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    days: int | None = None
    actor: str = "cli"
    # a rotation's request: the serial of the certificate it replaces (its key may not be
    # reused); see pki.issue.keyreuse
    replacing: int | None = None
    allow_key_reuse: bool = False  # a key bound to another identity's certificate: audited
    # fleetpki's own probe identity (PROBE_THING): set by fleetpki's code, never an option
    probe: bool = False


@dataclass(frozen=True)
class CertificateRecord:
    """One row of the inventory, as the operator sees it."""

    serial: int
    thing: str | None
    common_name: str
    profile: str
    status: Status
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    issuer: str
    backend: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revocation_reason: RevocationReason | None = None
    sans: tuple[str, ...] = field(default=())
    issuer_key_id: str | None = None  # the signing CA's key identifier, hex

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)

    def effective_status(self, now: dt.datetime) -> Status:
        if self.status is Status.ACTIVE and self.not_after <= now:
            return Status.EXPIRED
        return self.status

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "serial": self.serial_hex,
            "thing": self.thing,
            "common_name": self.common_name,
            "profile": self.profile,
            "status": self.effective_status(now).value,
            "not_before": isoformat(self.not_before),
            "not_after": isoformat(self.not_after),
            "fingerprint_sha256": self.fingerprint_sha256,
            "issuer": self.issuer,
            "backend": self.backend,
            "sans": list(self.sans),
            "created_at": iso_event(self.created_at),
            "revoked_at": iso_event(self.revoked_at),
            "revocation_reason": (self.revocation_reason.value if self.revocation_reason else None),
            "issuer_key_id": self.issuer_key_id,
        }


@dataclass(frozen=True)
class IssuedCertificate:
    """The result of an issuance: the inventory record and the PEMs to hand out.

    Plain bytes and values only, so results cross process boundaries (batch workers).
    """

    record: CertificateRecord
    cert_pem: bytes
    chain_pem: bytes  # issuing CA, then root
    issuing_pem: bytes
    key_id: str | None = None  # SHA-256 of the SubjectPublicKeyInfo
    existing: bool = False  # issued before for this very request: delivered again
    key_reused: bool = False  # its key is bound to another identity too (--allow-key-reuse)

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def fullchain_pem(self) -> bytes:
        """What a TLS peer presents: the certificate, then the issuing CA."""
        return self.cert_pem + self.issuing_pem
