"""Getting certificates to the operator: CSR files in, PEM files out, never half-written."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pki.errors import AlreadyExists, InvalidInput, PolicyViolation
from pki.files import (
    check_writable_folder,
    ensure_dir,
    read_limited,
    read_stdin,
    refuse_special,
    stage_files,
)
from pki.issue import policy
from pki.issue.csr import MAX_CSR_BYTES
from pki.issue.pending import PendingDelivery
from pki.keys import generate_key
from pki.model import IssuedCertificate, IssueRequest, KeyType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
FULLCHAIN_FILE = "fullchain.pem"
KEY_FILE = "key.pem"
# --format der: one DER object per file
DER_FILES = ("cert.der", "issuing-ca.der", "root-ca.der")
DER_KEY_FILE = "key.der"
# --format pkcs12: the key, the certificate and the CA chain in one encrypted file
P12_FILE = "bundle.p12"
P12_PASSPHRASE_ENV = "FLEETPKI_P12_PASSPHRASE"  # noqa: S105 (a variable name)
MIN_P12_PASSPHRASE = 8
FORMATS = ("pem", "der", "pkcs12")


def read_csr(path: Path) -> bytes:
    """A CSR file (PEM or DER), or standard input for ``-``, up to the CSR size limit."""
    if str(path) == "-":
        return read_stdin(MAX_CSR_BYTES, "CSR on standard input")
    return read_limited(path, MAX_CSR_BYTES, "CSR file")


def make_key_and_csr(key_type: KeyType, common_name: str) -> tuple[bytes, bytes]:
    """A new private key (PEM, unencrypted, for the device) and a CSR signed by it."""
    key = generate_key(key_type)
    try:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as exc:
        raise InvalidInput(f"name {common_name!r} cannot be a common name: {exc}") from None
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class OutputFolder:
    """What one issuance writes into its folder, by format:

    - ``pem``: ``cert.pem``, ``chain.pem`` (issuing CA + root), ``fullchain.pem`` (cert +
      issuing CA) and, with a generated key, ``key.pem`` (0600);
    - ``der``: ``cert.der``, ``issuing-ca.der``, ``root-ca.der`` and ``key.der`` (PKCS#8,
      0600) — one object per file, as devices that cannot parse PEM want;
    - ``pkcs12``: ``bundle.p12`` (0600): the key, the certificate and the CA chain,
      encrypted with a passphrase (AES-256, PBKDF2; what Java's keystores read).
    """

    path: Path
    with_key: bool = False
    force: bool = False
    fmt: str = "pem"
    p12_passphrase: bytes | None = field(default=None, repr=False)

    @property
    def files(self) -> tuple[Path, ...]:
        if self.fmt == "pkcs12":
            names: tuple[str, ...] = (P12_FILE,)
        elif self.fmt == "der":
            names = DER_FILES + ((DER_KEY_FILE,) if self.with_key else ())
        else:
            names = (CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE) + ((KEY_FILE,) if self.with_key else ())
        return tuple(self.path / n for n in names)

    def check_free(self) -> None:
        """Refuse, before anything is signed, an --out the files cannot go into: taken
        (without --force), not a writable folder, or holding something else than files."""
        check_writable_folder(self.path, "--out")
        for file in self.files:
            refuse_special(file)
            if not self.force and (file.exists() or file.is_symlink()):
                raise AlreadyExists(
                    f"{file} already exists; use --force to replace it, or another --out"
                )

    def contents(
        self, issued: IssuedCertificate, key_pem: bytes | None
    ) -> list[tuple[Path, bytes, int]]:
        """The files of one delivery: (path, bytes, mode)."""
        if self.fmt == "pkcs12":
            assert key_pem is not None and self.p12_passphrase is not None
            return [(self.path / P12_FILE, _pkcs12(issued, key_pem, self.p12_passphrase), 0o600)]
        if self.fmt == "der":
            chain = x509.load_pem_x509_certificates(issued.chain_pem)
            certs = (issued.certificate, chain[0], chain[-1])
            out = [
                (self.path / name, cert.public_bytes(serialization.Encoding.DER), 0o644)
                for name, cert in zip(DER_FILES, certs, strict=True)
            ]
            if key_pem is not None:
                out.insert(0, (self.path / DER_KEY_FILE, _der_key(key_pem), 0o600))
            return out
        out = [(self.path / KEY_FILE, key_pem, 0o600)] if key_pem is not None else []
        out += [
            (self.path / CERT_FILE, issued.cert_pem, 0o644),
            (self.path / CHAIN_FILE, issued.chain_pem, 0o644),
            (self.path / FULLCHAIN_FILE, issued.fullchain_pem, 0o644),
        ]
        return out

    def make_folder(self, key_pem: bytes | None) -> None:
        ensure_dir(self.path, 0o700 if key_pem is not None else 0o755)

    def deliver(self, key_pem: bytes | None) -> FolderDelivery:
        """The delivery of one certificate (and ``key_pem``, made here) into this folder."""
        return FolderDelivery(self, key_pem)


@dataclass(frozen=True)
class FolderDelivery:
    output: OutputFolder
    key_pem: bytes | None = field(default=None, repr=False)

    def stage(self, issued: Sequence[IssuedCertificate]) -> list[PendingDelivery]:
        self.output.make_folder(self.key_pem)
        return stage_each(
            [(i, self.output.contents(i, self.key_pem)) for i in issued], self.output.force
        )


def stage_each(
    items: Sequence[tuple[IssuedCertificate, list[tuple[Path, bytes, int]]]], overwrite: bool
) -> list[PendingDelivery]:
    """Stage the files of many certificates at once (written, then all fsynced: the file
    system flushes them together), all or none; one pending delivery per certificate."""
    files = [(path.absolute(), data, mode) for _, item in items for path, data, mode in item]
    staged = stage_files(files, overwrite=overwrite)
    out, start = [], 0
    for issued, item in items:
        mine = tuple(staged[start : start + len(item)])
        out.append(PendingDelivery(issued.record.serial, mine, overwrite, issued.existing))
        start += len(item)
    return out


def _der_key(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pkcs12(issued: IssuedCertificate, key_pem: bytes, passphrase: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs12

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)  # generate_key's
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(100_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    name = (issued.record.thing or issued.record.common_name).encode()
    return pkcs12.serialize_key_and_certificates(
        name,
        key,
        issued.certificate,
        x509.load_pem_x509_certificates(issued.chain_pem),
        encryption,
    )


def p12_passphrase(passphrase_file: Path | None) -> bytes:
    """The PKCS#12 passphrase: ``--p12-passphrase-file`` (its first line), else
    ``FLEETPKI_P12_PASSPHRASE``; never a command-line argument (``ps`` shows those)."""
    import os

    if passphrase_file is not None:
        lines = read_limited(passphrase_file, 4096, "passphrase file").splitlines()
        value = lines[0] if lines else b""
        source = str(passphrase_file)
    else:
        value = os.environ.get(P12_PASSPHRASE_ENV, "").encode("utf-8", "surrogateescape")
        source = P12_PASSPHRASE_ENV
        if not value:
            raise InvalidInput(
                f"--format pkcs12 needs a passphrase: set {P12_PASSPHRASE_ENV} or give "
                "--p12-passphrase-file FILE"
            )
    if len(value) < MIN_P12_PASSPHRASE:
        raise InvalidInput(
            f"the PKCS#12 passphrase from {source} is too short: use at least "
            f"{MIN_P12_PASSPHRASE} characters"
        )
    return value


class FolderPerThing:
    """Delivery of a batch into ``OUT/THING/``: a whole chunk's files staged at once."""

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.out_dir = out_dir
        self.force = force

    def folder(self, issued: IssuedCertificate) -> OutputFolder:
        thing = issued.record.thing or issued.record.common_name
        return OutputFolder(self.out_dir / thing, force=self.force)

    def stage(self, issued: Sequence[IssuedCertificate]) -> list[PendingDelivery]:
        items = []
        for item in issued:
            folder = self.folder(item)
            folder.make_folder(None)
            items.append((item, folder.contents(item, None)))
        return stage_each(items, self.force)


def single_request(
    *,
    profile: str,
    name: str,
    csr_file: Path | None,
    generate_key: bool,
    key_type: KeyType,
    out_dir: Path,
    days: int | None,
    force: bool,
    actor: str,
    dns: tuple[str, ...] = (),
    ips: tuple[IPAddress, ...] = (),
    fmt: str = "pem",
    p12_passphrase_file: Path | None = None,
    allow_key_reuse: bool = False,
) -> tuple[IssueRequest, FolderDelivery]:
    """The request and the delivery of ``--csr FILE | --generate-key --out DIR``.

    Refuses (before anything is signed) when both or neither are given, when the format
    cannot be written (PKCS#12 holds the key: only with ``--generate-key``, and with a
    passphrase) and when the output files exist without ``force``. With
    ``--generate-key`` the key is made here and written with the certificate, never
    before it is recorded.
    """
    if (csr_file is None) == (not generate_key):
        raise InvalidInput("give exactly one of --csr FILE or --generate-key")
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt!r}; use {', '.join(FORMATS)}")
    passphrase = None
    if fmt == "pkcs12":
        if not generate_key:
            raise InvalidInput(
                "--format pkcs12 bundles the private key: it goes with --generate-key (with "
                "--csr the key stays on the device; use --format pem or der)"
            )
        passphrase = p12_passphrase(p12_passphrase_file)
    elif p12_passphrase_file is not None:
        raise InvalidInput("--p12-passphrase-file goes with --format pkcs12")
    output = OutputFolder(
        out_dir, with_key=generate_key, force=force, fmt=fmt, p12_passphrase=passphrase
    )
    output.check_free()
    key_pem: bytes | None = None
    if csr_file is not None:
        csr_pem = read_csr(csr_file)
    else:
        # the name goes into the CSR made here: refuse it as the policy would, not with
        # whatever the CSR builder says about it
        violation = policy.name_violation(profile, name)
        if violation is not None:
            raise PolicyViolation(violation.reason, violation.message)
        key_pem, csr_pem = make_key_and_csr(key_type, name)
    request = IssueRequest(
        profile=profile,
        name=name,
        csr_pem=csr_pem,
        dns_names=dns,
        ip_addresses=ips,
        days=days,
        actor=actor,
        allow_key_reuse=allow_key_reuse,
    )
    return request, output.deliver(key_pem)
