"""A backend that returns the wrong certificate: it is quarantined, never handed out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.backends import SigningRequest
from pki.backends.local import LocalCA
from pki.clock import SystemClock
from pki.errors import IssuedCertificateMismatch
from pki.home import Home
from pki.issue.issuer import Issuer
from pki.model import IssueRequest, Status
from pki.storage import Inventory
from tests.helpers import make_csr


class WrongTemplateCA(LocalCA):
    """Like a Private CA with the wrong template: signs what it likes. (It signs in this
    process, so the issuer is told to check signatures as for a remote CA.)"""

    name = "wrong-template"

    def __init__(self, ca_dir: Path, passphrase: object, mistake: str) -> None:
        super().__init__(ca_dir, passphrase)  # type: ignore[arg-type]
        self.mistake = mistake

    def issue(self, request: SigningRequest) -> x509.Certificate:
        cert = super().issue(request)
        if self.mistake == "eku":
            builder = _copy(cert).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
            )
            return builder.sign(self._issuing_key, hashes.SHA256())
        if self.mistake == "key":
            other = ec.generate_private_key(ec.SECP256R1()).public_key()
            return _copy(cert, public_key=other).sign(self._issuing_key, hashes.SHA256())
        if self.mistake == "cn":
            other = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dev-2")])
            return (
                _copy(cert, subject=other)
                .add_extension(
                    cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, False
                )
                .sign(self._issuing_key, hashes.SHA256())
            )
        if self.mistake == "san":
            builder = (
                x509.CertificateBuilder()
                .subject_name(cert.subject)
                .issuer_name(cert.issuer)
                .public_key(cert.public_key())  # type: ignore[arg-type]
                .serial_number(cert.serial_number)
                .not_valid_before(cert.not_valid_before_utc)
                .not_valid_after(cert.not_valid_after_utc)
            )
            for ext in cert.extensions:
                value = ext.value
                if isinstance(value, x509.SubjectAlternativeName):
                    value = x509.SubjectAlternativeName([*value, x509.DNSName("evil.example")])
                builder = builder.add_extension(value, ext.critical)
            return builder.sign(self._issuing_key, hashes.SHA256())
        if self.mistake == "signer":
            stranger = ec.generate_private_key(ec.SECP256R1())
            return (
                _copy(cert)
                .add_extension(
                    cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, False
                )
                .sign(stranger, hashes.SHA256())
            )
        raise AssertionError(self.mistake)


def _copy(
    cert: x509.Certificate, public_key: object = None, subject: x509.Name | None = None
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or cert.subject)
        .issuer_name(cert.issuer)
        .public_key(public_key or cert.public_key())  # type: ignore[arg-type]
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.ExtendedKeyUsage):
            builder = builder.add_extension(ext.value, ext.critical)
    if public_key is not None:
        builder = builder.add_extension(
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, False
        )
    return builder


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("eku", "returned certificate has extended key usage ['1.3.6.1.5.5.7.3.1']"),
        ("key", "returned certificate has a different public key than the CSR"),
        ("signer", "returned certificate does not verify against the issuing CA"),
        ("cn", "returned certificate names CN=dev-2, not CN=dev-1"),
        ("san", "returned certificate has DNS names ['evil.example'], not []"),
    ],
)
def test_mismatch_is_quarantined_and_raised(
    ca_home: Path, tmp_path: Path, mistake: str, message: str
) -> None:
    home = Home(ca_home)
    inventory = Inventory.open(home.database_url)
    try:
        ca = WrongTemplateCA(home.ca_dir, home.passphrase, mistake)
        issuer = Issuer(ca, inventory, SystemClock(), verify_signature=True)
        assert issuer.verify_signature
        delivered = []
        with pytest.raises(IssuedCertificateMismatch) as caught:
            issuer.issue(
                IssueRequest("device", "dev-1", make_csr("dev-1")[0]),
                lambda issued: delivered.append(issued) or (lambda: None),
            )
        assert message in str(caught.value)
        assert delivered == []
        rows = inventory.find(now=dt.datetime.now(dt.UTC), thing="dev-1")
        assert [r.status for r in rows] == [Status.QUARANTINED]
        assert inventory.find(now=dt.datetime.now(dt.UTC), status=Status.ACTIVE) == []
        assert [e.action for e in inventory.audit_log()][-1] == "quarantine"
    finally:
        inventory.close()


def test_local_ca_skips_the_redundant_signature_check(ca_home: Path) -> None:
    home = Home(ca_home)
    inventory = Inventory.open(home.database_url)
    try:
        assert not Issuer(
            LocalCA(home.ca_dir, home.passphrase), inventory, SystemClock()
        ).verify_signature
    finally:
        inventory.close()
