"""Certificates for trust-bundle tests: CA chains with chosen keys, hashes and sizes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from tests.helpers import NOW

PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(PEM)


def make_ca(
    name: str,
    *,
    parent: Ca | None = None,
    key: Any = None,
    algorithm: hashes.HashAlgorithm | None = None,
    start: dt.datetime = NOW - dt.timedelta(days=1),
    days: int = 365,
    is_ca: bool = True,
    filler: int = 0,
) -> Ca:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject if parent else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), True)
    )
    if filler:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\0" * filler),
            False,
        )
    signer = parent.key if parent else key
    cert = builder.sign(signer, algorithm or hashes.SHA256())
    return Ca(cert, key)


def chain(depth: int, prefix: str = "L") -> list[Ca]:
    """Root first: root, then ``depth - 1`` intermediates, each signed by the previous."""
    cas = [make_ca(f"{prefix}0 root")]
    for level in range(1, depth):
        cas.append(make_ca(f"{prefix}{level}", parent=cas[-1]))
    return cas


def pems(cas: Sequence[Ca]) -> bytes:
    return b"".join(c.pem for c in cas)


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)
