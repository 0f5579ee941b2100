"""Checking what a backend returned against what was asked for, before anything is
recorded or handed out: the same key, a lifetime within the profile and the CA, the
profile's extensions, exactly the planned names, and (for a remote CA) the signature. A
mismatch is quarantined by the issuer, never delivered."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from pki.backends import SigningRequest
from pki.errors import IssuedCertificateMismatch
from pki.issue.policy import BACKDATE, CertificatePlan


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def subject_key_id(cert: x509.Certificate) -> str:
    """A CA certificate's key identifier (hex): its subjectKeyIdentifier, or the one
    RFC 5280 derives from its key."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def issuer_key_id(cert: x509.Certificate) -> str | None:
    """The key identifier of the CA that signed ``cert`` as the certificate names it
    (authorityKeyIdentifier; a self-signed root: its own key's); None when it does not."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        if aki.key_identifier:
            return aki.key_identifier.hex()
    except x509.ExtensionNotFound:
        pass
    return subject_key_id(cert) if cert.issuer == cert.subject else None


def spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class IssuingCa:
    """The issuing CA's certificate with the fields every check reads (cryptography builds
    a new ``Name`` and ``datetime`` on each access)."""

    certificate: x509.Certificate
    subject: x509.Name
    not_after: dt.datetime

    @classmethod
    def of(cls, certificate: x509.Certificate) -> IssuingCa:
        return cls(certificate, certificate.subject, certificate.not_valid_after_utc)


def verify_issued(
    cert: x509.Certificate,
    request: SigningRequest,
    issuing_ca: IssuingCa,
    *,
    check_signature: bool,
) -> None:
    """Check a certificate a backend returned against what was asked for.

    Raises ``IssuedCertificateMismatch`` naming the first difference.
    """
    plan = request.plan
    if cert.public_key() != request.public_key:
        raise _bad("has a different public key than the CSR")
    _check_validity(cert, plan, issuing_ca)
    san = _check_extensions(cert, plan)
    _check_names(cert, plan, san)
    if check_signature:
        try:
            cert.verify_directly_issued_by(issuing_ca.certificate)
        except Exception as exc:  # InvalidSignature, ValueError, TypeError...
            raise _bad(f"does not verify against the issuing CA: {exc}") from None


def _bad(what: str) -> IssuedCertificateMismatch:
    return IssuedCertificateMismatch("issue", "CA", f"returned certificate {what}")


def _check_validity(cert: x509.Certificate, plan: CertificatePlan, issuing_ca: IssuingCa) -> None:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > dt.timedelta(days=plan.profile.max_days) + BACKDATE:
        raise _bad(f"is valid for {lifetime.days} days, over the profile's {plan.profile.max_days}")
    if cert.not_valid_after_utc > issuing_ca.not_after:
        raise _bad("outlives the issuing CA")
    if cert.issuer != issuing_ca.subject:
        raise _bad(f"was issued by {cert.issuer.rfc4514_string()}, not the issuing CA")


def _check_extensions(cert: x509.Certificate, plan: CertificatePlan) -> x509.SubjectAlternativeName:
    found: dict[type, x509.ExtensionType] = {}
    for extension in cert.extensions:  # one pass; get_extension_for_class scans each time
        found[type(extension.value)] = extension.value
    constraints = found.get(x509.BasicConstraints)
    usage = found.get(x509.KeyUsage)
    eku = found.get(x509.ExtendedKeyUsage)
    san = found.get(x509.SubjectAlternativeName)
    if not (
        isinstance(constraints, x509.BasicConstraints)
        and isinstance(usage, x509.KeyUsage)
        and isinstance(eku, x509.ExtendedKeyUsage)
        and isinstance(san, x509.SubjectAlternativeName)
    ):
        raise _bad("lacks basicConstraints, keyUsage, extendedKeyUsage or subjectAltName")
    if constraints.ca:
        raise _bad("is a CA certificate")
    if usage.key_cert_sign or usage.crl_sign:
        raise _bad("may sign certificates or CRLs")
    if list(eku) != list(plan.profile.eku):
        raise _bad(f"has extended key usage {[o.dotted_string for o in eku]}")
    return san


def _check_names(
    cert: x509.Certificate, plan: CertificatePlan, san: x509.SubjectAlternativeName
) -> None:
    names: dict[str, tuple[set[str], set[str]]] = {
        "URI": (set(plan.uris), set(san.get_values_for_type(x509.UniformResourceIdentifier))),
        "DNS": (set(plan.dns_names), set(san.get_values_for_type(x509.DNSName))),
        "IP": (
            {str(ip) for ip in plan.ip_addresses},
            {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
        ),
    }
    for kind, (wanted, got) in names.items():
        if wanted != got:
            raise _bad(f"has {kind} names {sorted(got)}, not {sorted(wanted)}")
    other = [n for n in san if not isinstance(n, _PLANNED_NAME_TYPES)]
    if other:
        raise _bad(f"has other subject alternative names: {other[0]}")
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in common_names] != [plan.common_name]:
        raise _bad(f"names {cert.subject.rfc4514_string()}, not CN={plan.common_name}")


_PLANNED_NAME_TYPES = (x509.UniformResourceIdentifier, x509.DNSName, x509.IPAddress)
