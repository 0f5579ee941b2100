"""Adopting an AWS Private CA (its chain checked) and creating a root and a subordinate
for ``ca init --backend aws-pca --create``; taking down what a failed run created."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.backends.aws_pca import AwsPrivateCA
from pki.errors import FleetPkiError, InvalidInput, OperatorError

ROOT_TEMPLATE = "arn:aws:acm-pca:::template/RootCACertificate/V1"
SUBORDINATE_TEMPLATE = "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
# A deleted Private CA can be restored for this many days (7-30), then it is gone.
RESTORE_DAYS = 7

_KEY_ALGORITHMS = {
    "ec-p256": ("EC_prime256v1", "SHA256WITHECDSA"),
    "ec-p384": ("EC_secp384r1", "SHA384WITHECDSA"),
    "rsa-2048": ("RSA_2048", "SHA256WITHRSA"),
    "rsa-3072": ("RSA_3072", "SHA256WITHRSA"),
}


def check_chain(arn: str, chain: tuple[x509.Certificate, ...], now: dt.datetime) -> None:
    """The adopted CA's chain: every certificate a valid CA, each signed by the next, a root."""
    from pki.aws.bundles import chain_of

    def bad(why: str) -> OperatorError:
        return OperatorError(f"AWS Private CA {arn} cannot be used: {why}")

    if not chain:
        raise bad("it returned no certificate")
    for cert in chain:
        name = cert.subject.rfc4514_string()
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise bad(f"{name} is not a CA certificate (no basicConstraints CA:TRUE)")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise bad(f"{name} is not valid now")
    path, complete = chain_of(chain[0], chain)
    if not complete or len(path) != len(chain):
        raise bad("its certificate chain does not lead from the CA to a root")


def _token(*parts: str) -> str:
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:32]


class _HierarchyMaker:
    """The calls that make one CA of a hierarchy, through ``ca``'s pacing and retries."""

    def __init__(self, ca: AwsPrivateCA, key_type: str, made: list[str]) -> None:
        try:
            self.key_algorithm, self.signing = _KEY_ALGORITHMS[key_type]
        except KeyError:
            raise InvalidInput(f"unknown key type {key_type!r}") from None
        self.ca = ca
        self.client = ca.client
        self.made = made

    def create(self, kind: str, common_name: str) -> str:
        """A new CA (remembered in ``made`` at once), returned when its CSR exists."""
        response = self.ca.call(
            "CreateCertificateAuthority",
            "create a CA",
            self.client.create_certificate_authority,
            CertificateAuthorityConfiguration={
                "KeyAlgorithm": self.key_algorithm,
                "SigningAlgorithm": self.signing,
                "Subject": {"CommonName": common_name},
            },
            CertificateAuthorityType=kind,
            IdempotencyToken=_token(kind, common_name),
        )
        arn = str(response["CertificateAuthorityArn"])
        if arn not in self.made:
            self.made.append(arn)
        return arn

    def sign(self, issuer: str, subject: str, template: str, days: int) -> str:
        """``issuer`` signs ``subject``'s CSR with ``template``; the certificate's PEM."""
        csr = self.ca.call_until_ready(
            "GetCertificateAuthorityCsr",
            f"read the CSR of {subject}",
            self.client.get_certificate_authority_csr,
            CertificateAuthorityArn=subject,
        )["Csr"]
        issued = self.ca.call(
            "IssueCertificate",
            "issue a CA certificate",
            self.client.issue_certificate,
            CertificateAuthorityArn=issuer,
            Csr=csr.encode(),
            SigningAlgorithm=self.signing,
            TemplateArn=template,
            Validity={"Value": days, "Type": "DAYS"},
            IdempotencyToken=_token(issuer, subject),
        )["CertificateArn"]
        issuer_ca = AwsPrivateCA(
            issuer, self.client, clock=self.ca.clock, ticker=self.ca.ticker, wait=self.ca.wait
        )
        return issuer_ca.fetch(str(issued)).public_bytes(serialization.Encoding.PEM).decode()

    def install(self, arn: str, pem: str, chain: str | None, what: str) -> None:
        """Import a CA's certificate: no token makes a second import land on the first, so
        it is sent again only after throttling (which AWS never processed)."""
        params: dict[str, Any] = {"CertificateAuthorityArn": arn, "Certificate": pem.encode()}
        if chain:
            params["CertificateChain"] = chain.encode()
        self.ca.call(
            "ImportCertificateAuthorityCertificate",
            f"import the {what} certificate",
            self.client.import_certificate_authority_certificate,
            idempotent=False,
            **params,
        )


def create_hierarchy(
    ca: AwsPrivateCA,
    common_name: str,
    key_type: str,
    root_days: int,
    issuing_days: int,
    created: list[str] | None = None,
) -> str:
    """Create a root and a subordinate (path length 0) Private CA; return the subordinate.

    Every CA made is appended to ``created`` as soon as it exists, so that a caller can
    take them down again (``discard_cas``) when anything after that fails."""
    maker = _HierarchyMaker(ca, key_type, created if created is not None else [])
    if not 0 < issuing_days < root_days:
        raise InvalidInput("the issuing CA must expire before the root (issuing days < root)")
    root = maker.create("ROOT", f"{common_name} Root CA")
    root_pem = maker.sign(root, root, ROOT_TEMPLATE, root_days)
    maker.install(root, root_pem, None, "root")
    sub = maker.create("SUBORDINATE", f"{common_name} Issuing CA")
    maker.install(sub, maker.sign(root, sub, SUBORDINATE_TEMPLATE, issuing_days), root_pem,
                  "issuing CA")  # fmt: skip
    return sub


def discard_cas(ca: AwsPrivateCA, arns: list[str]) -> list[str]:
    """Take down Private CAs this run created (each is billed monthly): disable an ACTIVE
    one, then delete it (restorable for ``RESTORE_DAYS`` days), through ``ca``'s pacing
    and retries. Returns a line per CA saying what happened; failures are said, never
    raised."""
    lines = []
    for arn in reversed(arns):  # the subordinate before its root
        try:
            _take_down(ca, arn)
            lines.append(f"deleted {arn} (restorable for {RESTORE_DAYS} days)")
        except FleetPkiError as exc:
            lines.append(f"could not delete {arn}: {exc}; delete it by hand (it is billed)")
    return lines


def _take_down(ca: AwsPrivateCA, arn: str) -> None:
    """Disable, then delete. A retried request whose first attempt did land (the answer
    lost on the way) fails on the state it left: the CA's status then says it is done."""

    def status() -> str:
        got = ca.call(
            "DescribeCertificateAuthority",
            "describe a CA",
            ca.client.describe_certificate_authority,
            CertificateAuthorityArn=arn,
        )
        return str(got["CertificateAuthority"]["Status"])

    def step(api: str, doing: str, fn: Any, done: set[str], **params: Any) -> None:
        try:
            ca.call(api, doing, fn, CertificateAuthorityArn=arn, **params)
        except FleetPkiError:
            if status() not in done:
                raise

    current = status()
    if current == "ACTIVE":
        step("UpdateCertificateAuthority", "disable a CA", ca.client.update_certificate_authority,
             {"DISABLED", "DELETED"}, Status="DISABLED")  # fmt: skip
    if current != "DELETED":
        step("DeleteCertificateAuthority", "delete a CA", ca.client.delete_certificate_authority,
             {"DELETED"}, PermanentDeletionTimeInDays=RESTORE_DAYS)  # fmt: skip
