"""Trust bundles: strict, deterministic PEM of the CA certificates client certificates chain to.

Pure (cryptography only). ``parse_strict`` accepts nothing but ``CERTIFICATE`` blocks;
``build_bundle`` de-duplicates by SHA-256 of DER, orders the certificates stably and
refuses expired, non-CA and empty input; ``check_target`` names every way a bundle
breaks what API Gateway or ALB accepts. Nothing is uploaded before all of it passes.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.errors import InvalidInput, PolicyViolation


class Target(enum.StrEnum):
    APIGW = "apigw"
    ALB = "alb"

    @property
    def label(self) -> str:
        return "API Gateway" if self is Target.APIGW else "ALB"


# Limits of each target (AWS documentation, 2024-2025).
MAX_CHAIN_LENGTH = 4  # certificates from an issuing CA up to and including its root
ALB_MAX_CERTIFICATES = 25
ALB_MAX_CERTIFICATE_BYTES = 16 * 1024
ALB_RSA_BITS = (2048, 8192)
NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
STRONG_HASHES = ("sha256", "sha384", "sha512")

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)


@dataclass(frozen=True)
class Violation:
    """One reason a bundle is refused: a stable code, the certificate, and a sentence."""

    reason: str
    message: str
    subject: str | None = None

    def __str__(self) -> str:
        where = f"{self.subject}: " if self.subject else ""
        return f"{self.reason}: {where}{self.message}"


@dataclass(frozen=True)
class TrustBundle:
    """De-duplicated CA certificates in a stable order, and their PEM and its SHA-256."""

    certificates: tuple[x509.Certificate, ...]
    pem: bytes
    sha256: str

    def __len__(self) -> int:
        return len(self.certificates)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def refuse(violations: Sequence[Violation], target: Target | None = None) -> PolicyViolation:
    """One operator error that names every violation."""
    codes = ",".join(dict.fromkeys(v.reason for v in violations))
    scope = f"bundle for {target.label}" if target else "bundle"
    return PolicyViolation(codes, f"{scope} refused: " + "; ".join(str(v) for v in violations))


def parse_strict(data: bytes, source: str) -> list[x509.Certificate]:
    """Only PEM ``CERTIFICATE`` blocks without headers, separated by nothing but whitespace."""
    certs: list[x509.Certificate] = []
    position = 0
    for match in _PEM_BLOCK.finditer(data):
        between = data[position : match.start()]
        position = match.end()
        if between.strip():
            raise refuse([Violation("stray-text", f"{source} has text outside PEM blocks")])
        label, body, end = match.group(1), match.group(2), match.group(3)
        if b"PRIVATE KEY" in label or b"PRIVATE KEY" in end:
            raise refuse([Violation("private-key", f"{source} contains a private key")])
        if label != b"CERTIFICATE" or end != b"CERTIFICATE":
            kind = label.decode(errors="replace")
            raise refuse([Violation("not-a-certificate", f"{source} contains a {kind} block")])
        if b":" in body:
            raise refuse([Violation("pem-headers", f"{source} has a PEM block with headers")])
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
        except (ValueError, x509.InvalidVersion) as exc:
            raise InvalidInput(f"{source} has a malformed certificate: {exc}") from None
    rest = data[position:]
    if b"PRIVATE KEY" in rest:
        raise refuse([Violation("private-key", f"{source} contains a private key")])
    if rest.strip():
        raise refuse([Violation("stray-text", f"{source} has text outside PEM blocks")])
    return certs


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def build_bundle(certificates: Iterable[x509.Certificate], now: dt.datetime) -> TrustBundle:
    """Refuse expired, not-yet-valid and non-CA certificates and an empty result."""
    unique: dict[str, x509.Certificate] = {}
    for cert in certificates:
        unique.setdefault(der_sha256(cert), cert)
    violations: list[Violation] = []
    for cert in unique.values():
        if cert.not_valid_after_utc <= now:
            violations.append(
                Violation("expired", f"expired {cert.not_valid_after_utc:%Y-%m-%d}", _name(cert))
            )
        elif cert.not_valid_before_utc > now:
            violations.append(Violation("not-yet-valid", "is not valid yet", _name(cert)))
        if not _is_ca(cert):
            violations.append(
                Violation("not-a-ca", "is not a CA certificate (basicConstraints)", _name(cert))
            )
    if violations:
        raise refuse(violations)
    if not unique:
        raise refuse([Violation("empty-bundle", "no CA certificates to put in the bundle")])
    ordered = tuple(
        cert for _, cert in sorted(unique.items(), key=lambda item: (_name(item[1]), item[0]))
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ordered)
    return TrustBundle(ordered, pem, hashlib.sha256(pem).hexdigest())


# -- target checks ----------------------------------------------------------------------


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Names chain and the signature verifies; with an algorithm cryptography refuses
    (SHA-1) the name match is taken, and ``weak-signature`` reports the algorithm."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except UnsupportedAlgorithm:
        return True
    except ValueError as exc:
        return "unsupported signature algorithm" in str(exc).lower()
    except (TypeError, InvalidSignature):
        return False
    return True


def _issuer_in(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for candidate in pool:
        if candidate is not cert and _signed_by(cert, candidate):
            return candidate
    return None


def _self_signed(cert: x509.Certificate) -> bool:
    return _signed_by(cert, cert)


def chain_of(
    cert: x509.Certificate, pool: Sequence[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], bool]:
    """The path from ``cert`` upwards inside ``pool``; True when it ends at a root."""
    path = [cert]
    while not _self_signed(path[-1]):
        parent = _issuer_in(path[-1], pool)
        if parent is None or parent in path:
            return tuple(path), False
        path.append(parent)
    return tuple(path), True


def _key_violation(cert: x509.Certificate, target: Target) -> Violation | None:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        low, high = ALB_RSA_BITS if target is Target.ALB else (2048, None)
        if key.key_size < low or (high is not None and key.key_size > high):
            allowed = f"RSA {low}-{high}" if high else f"RSA >= {low}"
            return Violation(
                "unsupported-key",
                f"RSA {key.key_size}-bit key; {target.label} accepts {allowed} or ECDSA "
                "P-256/P-384/P-521",
                _name(cert),
            )
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in NIST_CURVES:
            return Violation(
                "unsupported-key",
                f"EC {key.curve.name} key; {target.label} accepts ECDSA P-256/P-384/P-521 or RSA",
                _name(cert),
            )
        return None
    return Violation("unsupported-key", f"{type(key).__name__} keys are not accepted", _name(cert))


def check_pem_text(pem: bytes, target: Target) -> list[Violation]:
    """Checks on the bytes that will be uploaded."""
    if target is Target.ALB and b"\n\n" in pem.replace(b"\r\n", b"\n"):
        return [Violation("blank-lines", "ALB refuses a bundle with blank lines")]
    return []


def check_target(
    bundle: TrustBundle, target: Target, *, max_certificates: int = ALB_MAX_CERTIFICATES
) -> list[Violation]:
    """Every way ``bundle`` breaks what ``target`` accepts (empty when it fits)."""
    certs = bundle.certificates
    found: list[Violation] = []
    if target is Target.ALB and len(certs) > max_certificates:
        found.append(
            Violation(
                "too-many-certificates",
                f"{len(certs)} CA certificates; an ALB trust store takes at most "
                f"{max_certificates} (raise --max-certificates only for a raised quota)",
            )
        )
    for cert in certs:
        subject = _name(cert)
        if cert.version is not x509.Version.v3:
            found.append(Violation("not-v3", "is not an X.509 v3 certificate", subject))
        key_problem = _key_violation(cert, target)
        if key_problem:
            found.append(key_problem)
        if target is Target.APIGW:
            algorithm = cert.signature_hash_algorithm
            if algorithm is None or algorithm.name not in STRONG_HASHES:
                name = algorithm.name if algorithm else "no hash"
                found.append(
                    Violation(
                        "weak-signature",
                        f"signed with {name}; API Gateway needs SHA-256 or stronger",
                        subject,
                    )
                )
        if target is Target.ALB:
            size = len(cert.public_bytes(serialization.Encoding.DER))
            if size > ALB_MAX_CERTIFICATE_BYTES:
                found.append(
                    Violation(
                        "certificate-too-large",
                        f"{size} bytes; ALB takes CA certificates up to 16 KB",
                        subject,
                    )
                )
        path, complete = chain_of(cert, certs)
        if len(path) > MAX_CHAIN_LENGTH:
            found.append(
                Violation(
                    "chain-too-long",
                    f"chain of {len(path)} certificates; {target.label} allows at most "
                    f"{MAX_CHAIN_LENGTH}",
                    subject,
                )
            )
        if target is Target.APIGW and not complete:
            found.append(
                Violation(
                    "incomplete-chain",
                    f"its issuer {path[-1].issuer.rfc4514_string()} is not in the bundle; "
                    "API Gateway needs the full chain up to the root",
                    subject,
                )
            )
    return found + check_pem_text(bundle.pem, target)


def require_target(
    bundle: TrustBundle, target: Target, *, max_certificates: int = ALB_MAX_CERTIFICATES
) -> TrustBundle:
    violations = check_target(bundle, target, max_certificates=max_certificates)
    if violations:
        raise refuse(violations, target)
    return bundle
