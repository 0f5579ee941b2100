"""Parse and verify a certificate signing request (proof of possession). Pure."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from pki.errors import InvalidInput, PolicyViolation

# cryptography warns (UserWarning, on stderr) about subject attributes of the wrong
# length, e.g. C=USA. Only the CN of a CSR is used, and it is checked by the policy: the
# warning would only reach the operator as noise above the real answer.
warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
# ... and about DSA keys (deprecated) before the policy refuses them in one line
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning
)

MAX_CSR_BYTES = 64 * 1024
WEAK_HASHES = frozenset({"md5", "sha1", "sha224"})

_CSR_MARKERS = (b"-----BEGIN CERTIFICATE REQUEST-----", b"-----BEGIN NEW CERTIFICATE REQUEST-----")
_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"


@dataclass(frozen=True)
class KeyFacts:
    """``algorithm`` is ``ec`` or ``rsa`` (anything else: ``unsupported:<name>``)."""

    algorithm: str
    curve: str | None = None
    bits: int = 0
    rsa_exponent: int | None = None

    def describe(self) -> str:
        if self.algorithm == "ec":
            return f"EC {self.curve}"
        if self.algorithm == "rsa":
            return f"RSA {self.bits}"
        return self.algorithm.removeprefix("unsupported:")


@dataclass(frozen=True)
class CsrFacts:
    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    key: KeyFacts
    common_names: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    uris: tuple[str, ...]
    other_sans: tuple[str, ...]
    requests_ca: bool
    extension_oids: tuple[str, ...]
    key_usage: x509.KeyUsage | None
    eku: tuple[str, ...] | None


def key_facts(key: object) -> KeyFacts:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return KeyFacts("ec", curve=key.curve.name, bits=key.curve.key_size)
    if isinstance(key, rsa.RSAPublicKey):
        return KeyFacts("rsa", bits=key.key_size, rsa_exponent=key.public_numbers().e)
    return KeyFacts(f"unsupported:{type(key).__name__.removeprefix('_')}")


def parse(data: bytes) -> CsrFacts:
    """Load a CSR (PEM or DER), check its signature, and extract the facts policy needs.

    The input must be exactly one CSR and nothing else: no private key (PEM, DER or bare
    base64 after it), no second request, no trailing data. Raises ``InvalidInput`` for
    anything else and ``PolicyViolation('bad-signature')`` when the proof of possession
    fails.
    """
    csr = load_csr(data)
    try:
        algorithm = csr.signature_hash_algorithm
    except Exception:  # an algorithm cryptography does not know
        algorithm = None
    if isinstance(algorithm, hashes.HashAlgorithm) and algorithm.name in WEAK_HASHES:
        raise PolicyViolation(
            "weak-signature",
            f"CSR is signed with {algorithm.name.upper()}; use SHA-256 or stronger",
        )
    try:
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidInput(f"malformed CSR: {_first_line(exc)}") from None
    except Exception as exc:  # cryptography raises several types for odd keys
        raise PolicyViolation("unsupported-key", f"CSR key cannot be used: {exc}") from None
    if not signature_ok:
        raise PolicyViolation(
            "bad-signature",
            "CSR signature does not verify (the request was altered or not signed by its key)",
        )
    try:
        common_names = tuple(
            str(attr.value) for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    except ValueError as exc:
        raise InvalidInput(f"malformed CSR subject: {_first_line(exc)}") from None
    try:
        return _facts(csr, public_key, common_names)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidInput(f"malformed CSR extensions: {_first_line(exc)}") from None


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Exactly one CSR: one PEM block with only white space around it, or DER alone."""
    if len(data) > MAX_CSR_BYTES:
        raise InvalidInput(f"CSR is {len(data)} bytes, over the {MAX_CSR_BYTES // 1024} KiB limit")
    if _PRIVATE_KEY_MARKER in data:
        raise InvalidInput(
            "input contains a PRIVATE KEY block; send only the CSR, never the device key"
        )
    if data.lstrip()[:1] == b"-" or b"-----BEGIN" in data:
        der = _pem_body(data)
    elif data[:1] == b"\x30":  # a DER SEQUENCE
        der = data
    else:
        raise InvalidInput(
            "input is not a PEM certificate request (no BEGIN CERTIFICATE REQUEST) nor a DER one"
        )
    try:
        return x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: not a ValueError
        if "ExtraData" in str(exc):
            raise InvalidInput(
                "data follows the certificate request: send the CSR alone (never the device key)"
            ) from None
        raise InvalidInput(f"malformed CSR: {_first_line(exc)}") from None


# what 'openssl req -text' writes before the PEM block (a readable dump of the request)
_OPENSSL_TEXT = b"Certificate Request:"
_PEM_BLOCK = re.compile(
    rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----(?P<body>[A-Za-z0-9+/=\s]*?)"
    rb"-----END (NEW )?CERTIFICATE REQUEST-----"
)


def _pem_body(data: bytes) -> bytes:
    """The DER inside the one PEM CSR block of ``data``; nothing but white space may
    surround it (a key in bare base64 after it, a second block: refused)."""
    count = sum(data.count(marker) for marker in _CSR_MARKERS)
    if count == 0:
        raise InvalidInput("input is not a PEM certificate request (no BEGIN CERTIFICATE REQUEST)")
    if count > 1:
        raise InvalidInput("input holds more than one certificate request; send one per file")
    match = _PEM_BLOCK.search(data)
    if match is None:
        raise InvalidInput("malformed CSR: the PEM block is not well formed")
    before, after = data[: match.start()].strip(), data[match.end() :].strip()
    if after:
        raise InvalidInput(
            "data follows the certificate request: send the CSR alone (never the device key)"
        )
    if before and not _openssl_dump(before):
        raise InvalidInput(
            "data comes before the certificate request: send the CSR alone (only the "
            "readable dump 'openssl req -text' writes may come first)"
        )
    try:
        return base64.b64decode(b"".join(match.group("body").split()), validate=True)
    except binascii.Error:
        raise InvalidInput("malformed CSR: the PEM block is not valid base64") from None


def _openssl_dump(text: bytes) -> bool:
    """Whether ``text`` is the readable dump ``openssl req -text`` writes before the PEM
    block: its heading, then only indented lines (a key in bare base64 is not)."""
    first, _, rest = text.partition(b"\n")
    return first.strip() == _OPENSSL_TEXT.strip() and all(
        not line.strip() or line[:1] in (b" ", b"\t") for line in rest.splitlines()
    )


def _facts(
    csr: x509.CertificateSigningRequest,
    public_key: CertificatePublicKeyTypes,
    cns: tuple[str, ...],
) -> CsrFacts:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    uris: list[str] = []
    other: list[str] = []
    requests_ca = False
    key_usage: x509.KeyUsage | None = None
    eku: tuple[str, ...] | None = None
    oids: list[str] = []
    for ext in csr.extensions:
        oids.append(ext.oid.dotted_string)
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            for gn in value:
                if isinstance(gn, x509.DNSName):
                    dns.append(gn.value)
                elif isinstance(gn, x509.IPAddress):
                    if isinstance(gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                        ips.append(gn.value)
                    else:
                        other.append(f"IP network {gn.value}")
                elif isinstance(gn, x509.UniformResourceIdentifier):
                    uris.append(gn.value)
                elif isinstance(gn, x509.RFC822Name):
                    other.append(f"email:{gn.value}")
                else:
                    other.append(type(gn).__name__)
        elif isinstance(value, x509.BasicConstraints):
            requests_ca = value.ca
        elif isinstance(value, x509.KeyUsage):
            key_usage = value
        elif isinstance(value, x509.ExtendedKeyUsage):
            eku = tuple(oid.dotted_string for oid in value)
    return CsrFacts(
        csr=csr,
        public_key=public_key,
        key=key_facts(public_key),
        common_names=cns,
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        uris=tuple(uris),
        other_sans=tuple(other),
        requests_ca=requests_ca,
        extension_oids=tuple(oids),
        key_usage=key_usage,
        eku=eku,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
