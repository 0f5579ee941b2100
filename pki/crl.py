"""CRLs: built in one pass, numbered monotonically, checked fast."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

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
