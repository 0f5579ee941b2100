"""Certificate profiles: what each kind of certificate may contain."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import KeyUsage
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pki.errors import InvalidInput

# IoT Core's thing-name rule.
THING_NAME_PATTERN = r"[A-Za-z0-9:_-]{1,128}"


@dataclass(frozen=True)
class CertificateProfile:
    name: str
    eku: tuple[ObjectIdentifier, ...]
    default_days: int
    max_days: int
    ec_curves: tuple[str, ...] = ("secp256r1", "secp384r1")
    rsa_min_bits: int = 2048
    rsa_max_bits: int = 8192
    allow_wildcard: bool = False
    is_ca: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.default_days <= self.max_days:
            raise ValueError(f"profile {self.name}: default_days must be in 1..max_days")


DEVICE = CertificateProfile(
    name="device",
    eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    default_days=90,
    max_days=397,
)

SERVER = CertificateProfile(
    name="server",
    eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
    default_days=90,
    max_days=397,
)

PROFILES = {p.name: p for p in (DEVICE, SERVER)}

# Names under which the CA's own certificates are recorded in the inventory.
ROOT_CA_PROFILE = "root-ca"
ISSUING_CA_PROFILE = "issuing-ca"
CA_PROFILES = frozenset({ROOT_CA_PROFILE, ISSUING_CA_PROFILE})


def get_profile(name: str, *, allow_wildcard: bool = False) -> CertificateProfile:
    try:
        profile = PROFILES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None
    if allow_wildcard and profile is SERVER:
        return dataclasses.replace(profile, allow_wildcard=True)
    return profile


def key_usage_for(public_key: object) -> KeyUsage:
    """End-entity TLS key usage: digitalSignature, plus keyEncipherment for RSA keys."""
    return KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
