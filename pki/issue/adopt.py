"""Recording a certificate this CA signed that the inventory has no row for (a crash of
a fleetpki from before delivery came after the commit, or an inventory restored from an
older backup): once recorded it can be revoked, listed and renewed. Only a certificate
whose signature the issuing CA's key made is taken."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.errors import InvalidInput
from pki.files import read_regular
from pki.issue.check import fingerprint, subject_key_id
from pki.issue.keyreuse import key_id
from pki.model import CertificateRecord, Status
from pki.storage import AuditEvent, NewCertificate

if TYPE_CHECKING:
    from pki.app import App

_NAMES = (("cert.pem", True), ("cert.der", False))


def load_delivered(folder: Path) -> x509.Certificate | None:
    """The certificate a delivery folder holds (``cert.pem`` or ``cert.der``), if any."""
    for name, pem in _NAMES:
        try:
            data = read_regular(folder / name, 65536, "certificate")
            return (
                x509.load_pem_x509_certificate(data)
                if pem
                else x509.load_der_x509_certificate(data)
            )
        except (OSError, ValueError, InvalidInput):
            continue
    return None


def adopt(app: App, cert: x509.Certificate, issuing: x509.Certificate) -> CertificateRecord:
    try:
        cert.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, Exception) as exc:  # InvalidSignature has no message
        raise InvalidInput(f"not signed by this home's issuing CA ({type(exc).__name__})") from None
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(common_names[0].value) if common_names else ""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    device = (
        ExtendedKeyUsageOID.CLIENT_AUTH in usages and ExtendedKeyUsageOID.SERVER_AUTH not in usages
    )
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(getattr(n, "value", n)) for n in sans)
    except x509.ExtensionNotFound:
        names = ()
    now = app.now()
    record = CertificateRecord(
        serial=cert.serial_number,
        thing=common_name if device else None,
        common_name=common_name,
        profile="device" if device else "server",
        status=Status.ACTIVE,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=fingerprint(cert),
        issuer=issuing.subject.rfc4514_string(),
        backend=app.ca().name,
        created_at=now,
        sans=names,
        issuer_key_id=subject_key_id(issuing),
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    event = AuditEvent(now, app.actor, "adopt", record.serial_hex,
                       {"profile": record.profile, "thing": record.thing,
                        "reason": "found delivered without a row"})  # fmt: skip
    inventory = app.inventory()
    with inventory.transaction() as conn:
        new = NewCertificate(record, pem, key_id(cert.public_key()))
        inventory.add_certificates(conn, [new], [event])
    return record
