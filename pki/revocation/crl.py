"""CRLs: built in one pass, numbered monotonically, checked fast."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.backends import RevokedEntry
from pki.model import RevocationReason

DEFAULT_NEXT_UPDATE = dt.timedelta(days=7)


def build_crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    entries: Sequence[RevokedEntry],
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    algorithm: hashes.SHA256 | hashes.SHA384,
) -> x509.CertificateRevocationList:
    """A full CRL for ``issuer``. The revoked list is made once and handed to the builder
    whole (adding entries one by one copies the list each time: quadratic)."""
    if next_update <= this_update:
        raise ValueError("nextUpdate must be after thisUpdate")
    revoked = [_revoked(entry) for entry in entries]
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=revoked,
    )
    return builder.sign(key, algorithm)


# One (immutable) extension list per reason, shared by every entry with that reason.
_REASON_EXTENSIONS: dict[RevocationReason, list[x509.Extension[x509.ExtensionType]]] = {
    reason: (
        []
        if reason is RevocationReason.UNSPECIFIED
        else [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(reason.x509_flag))]
    )
    for reason in RevocationReason
}


def _revoked(entry: RevokedEntry) -> x509.RevokedCertificate:
    return x509.RevokedCertificateBuilder(
        entry.serial, entry.revoked_at, _REASON_EXTENSIONS[entry.reason]
    ).build()


def revoked_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    """Index a CRL's serials once, for checking many certificates against it.

    ``get_revoked_certificate_by_serial_number`` scans the whole list per call.
    """
    return frozenset(entry.serial_number for entry in crl)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def check_serials(serials: Iterable[int], revoked: frozenset[int]) -> list[int]:
    """The serials of ``serials`` that are revoked, in the order given."""
    return [s for s in serials if s in revoked]


# A CRL is re-signed once two thirds of its validity have passed (the same rule as a leaf's
# renewal): a week-long CRL about two days before its nextUpdate, the root's 180-day CRL
# two months before.
REFRESH_FRACTION = 2 / 3


@dataclass(frozen=True)
class CrlHealth:
    """How one CA's published CRL stands at ``now``: ``fresh``, ``due`` (past its refresh
    time: re-sign it), ``stale`` (past nextUpdate: relying parties that check it refuse
    every client) or ``missing``."""

    ca: str
    state: str
    number: int | None = None
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    refresh_at: dt.datetime | None = None

    @property
    def needs_signing(self) -> bool:
        return self.state != "fresh"

    def message(self, now: dt.datetime) -> str | None:
        """A warning for the operator, or None when the CRL is fresh."""
        if self.state == "missing":
            return f"the {self.ca} CA has no published CRL"
        if self.state == "fresh" or self.next_update is None:
            return None
        left = self.next_update - now
        if self.state == "stale":
            return (
                f"the {self.ca} CA's CRL #{self.number} expired at "
                f"{self.next_update:%Y-%m-%d %H:%M}Z: relying parties that check it refuse "
                "every client"
            )
        return (
            f"the {self.ca} CA's CRL #{self.number} reaches its nextUpdate in "
            f"{_human(left)} ({self.next_update:%Y-%m-%d %H:%M}Z)"
        )


def crl_health(ca: str, crl: x509.CertificateRevocationList | None, now: dt.datetime) -> CrlHealth:
    if crl is None or crl.next_update_utc is None:
        return CrlHealth(ca, "missing")
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    refresh_at = this_update + (next_update - this_update) * REFRESH_FRACTION
    try:
        number: int | None = crl_number(crl)
    except x509.ExtensionNotFound:
        number = None
    state = "stale" if now >= next_update else "due" if now >= refresh_at else "fresh"
    return CrlHealth(ca, state, number, this_update, next_update, refresh_at)


def _human(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    return f"{max(1, seconds // 60)} minutes"
