"""Ceiling B of the issuance rows: the limit of a CA that records what it signs, written
with nothing but ``cryptography``, ``hashlib``, ``json`` and the bare ``sqlite3`` driver.

Per CSR: load + signature check, sign a certificate with the extensions fleetpki puts in,
PEM; the same check of the certificate that came back as fleetpki makes (the public key,
the lifetime within the profile and the CA, the issuer, basicConstraints / keyUsage /
extendedKeyUsage / subjectAltName present and right, exactly the planned names, the CN),
in plain ``cryptography`` calls; the SHA-256 fingerprint and the SPKI hash; then the
certificate row and the audit row (its chain hash over the previous one, as
``pki.storage.audit``), inserted with ``executemany`` into the inventory's own tables
(made by fleetpki, so the indexes are the same) with the same settings (WAL,
``synchronous=FULL``), committed 1,000 at a time with the audit head, as the batch path
commits them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
COMMIT = 1000  # pki.issue.issuer.BATCH_COMMIT_SIZE
PREFIX = "https://fleetpki.local/things/"
MAX_DAYS = 90
BACKDATE = dt.timedelta(minutes=5)

_CERT_SQL = (
    "INSERT INTO certificates (serial, fingerprint_sha256, thing, common_name, profile, "
    "status, backend, issuer, not_before, not_after, sans, pem, created_at, revoked_at, "
    "revocation_reason, spki_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_AUDIT_SQL = (
    "INSERT INTO audit_events (at, actor, action, serial, detail, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def signed(
    csr: x509.CertificateSigningRequest,
    public: Any,
    issuer: x509.Name,
    key: Any,
    aki: x509.AuthorityKeyIdentifier,
    uri: str,
    not_before: dt.datetime,
) -> x509.Certificate:
    """The certificate the ceilings sign: the extensions fleetpki puts in a device's."""
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=MAX_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(aki, False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class CeilingB:
    """One database (made by fleetpki's own schema) written with the bare driver."""

    def __init__(self, ca: Any, db_path: Path) -> None:
        from pki.storage import Inventory

        Inventory.create(f"sqlite:///{db_path}").close()  # the same tables and indexes
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.issuing = ca.issuing_certificate
        self.key = ca._issuing_key
        self.subject = self.issuing.subject
        self.issuer_text = self.subject.rfc4514_string()
        self.ca_not_after = self.issuing.not_valid_after_utc
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.issuing_ski)
        self.head = ""

    def close(self) -> None:
        self.db.close()

    def seconds(self, csrs: list[tuple[str, bytes]]) -> float:
        start = time.perf_counter()
        certs: list[tuple[Any, ...]] = []
        audits: list[tuple[Any, ...]] = []
        for name, pem in csrs:
            cert_row, audit_row = self._one(name, pem)
            certs.append(cert_row)
            audits.append(audit_row)
            if len(certs) >= COMMIT:
                self._commit(certs, audits)
                certs, audits = [], []
        if certs:
            self._commit(certs, audits)
        return time.perf_counter() - start

    def _one(self, name: str, pem: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise AssertionError("bad CSR")
        public = csr.public_key()
        now = dt.datetime.now(dt.UTC)
        uri = PREFIX + name
        cert = signed(csr, public, self.subject, self.key, self.aki, uri, now - BACKDATE)
        self._check(cert, public, name, uri)
        text = cert.public_bytes(PEM).decode()
        serial = format(cert.serial_number, "040x")
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        spki = hashlib.sha256(public.public_bytes(DER, SPKI)).hexdigest()
        cert_row = (serial, cert.fingerprint(hashes.SHA256()).hex(), name, name, "device",
                    "active", "local", self.issuer_text, _stamp(not_before), _stamp(not_after),
                    json.dumps([uri]), text, _stamp(now), None, None, spki)  # fmt: skip
        detail = json.dumps({"profile": "device", "thing": name, "common_name": name,
                             "backend": "local", "not_after": not_after.isoformat()},
                            sort_keys=True)  # fmt: skip
        canonical = json.dumps([self.head, now.isoformat(timespec="microseconds"), "bench",
                                "issue", serial, detail], separators=(",", ":"))  # fmt: skip
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        audit_row = (_stamp(now), "bench", "issue", serial, detail, self.head, digest)
        self.head = digest
        return cert_row, audit_row

    def _check(self, cert: x509.Certificate, public: Any, name: str, uri: str) -> None:
        """What fleetpki checks on every returned certificate, in plain calls."""
        if cert.public_key() != public:
            raise AssertionError("another key")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        if lifetime > dt.timedelta(days=MAX_DAYS) + BACKDATE:
            raise AssertionError("too long")
        if cert.not_valid_after_utc > self.ca_not_after or cert.issuer != self.subject:
            raise AssertionError("outlives the CA, or another issuer")
        found = {type(e.value): e.value for e in cert.extensions}
        constraints = found.get(x509.BasicConstraints)
        usage = found.get(x509.KeyUsage)
        eku = found.get(x509.ExtendedKeyUsage)
        san = found.get(x509.SubjectAlternativeName)
        if not (isinstance(constraints, x509.BasicConstraints) and isinstance(usage, x509.KeyUsage)
                and isinstance(eku, x509.ExtendedKeyUsage)
                and isinstance(san, x509.SubjectAlternativeName)):  # fmt: skip
            raise AssertionError("an extension is missing")
        if constraints.ca or usage.key_cert_sign or usage.crl_sign:
            raise AssertionError("a CA")
        if list(eku) != [ExtendedKeyUsageOID.CLIENT_AUTH]:
            raise AssertionError("another EKU")
        if set(san.get_values_for_type(x509.UniformResourceIdentifier)) != {uri} or len(san) != 1:
            raise AssertionError("other names")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [a.value for a in cns] != [name]:
            raise AssertionError("another CN")

    def _commit(self, certs: list[tuple[Any, ...]], audits: list[tuple[Any, ...]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_CERT_SQL, certs)
        db.executemany(_AUDIT_SQL, audits)
        db.execute("UPDATE fleetpki_meta SET value = ? WHERE key = 'audit_head'", (self.head,))
        db.execute("COMMIT")
