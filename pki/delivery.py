"""Getting certificates to the operator: CSR files in, PEM files out, never half-written."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki import policy
from pki.backends.local import generate_key
from pki.csr import MAX_CSR_BYTES
from pki.errors import AlreadyExists, InvalidInput, PolicyViolation
from pki.files import (
    atomic_write_many,
    check_writable_folder,
    ensure_dir,
    read_limited,
    refuse_special,
    remove_quietly,
)
from pki.model import IssuedCertificate, IssueRequest, KeyType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
FULLCHAIN_FILE = "fullchain.pem"
KEY_FILE = "key.pem"


def read_csr(path: Path) -> bytes:
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
    """``cert.pem``, ``chain.pem`` (issuing CA + root), ``fullchain.pem`` (cert + issuing CA)
    and, with a generated key, ``key.pem`` (0600)."""

    path: Path
    with_key: bool = False
    force: bool = False

    @property
    def files(self) -> tuple[Path, ...]:
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
        out = [(self.path / KEY_FILE, key_pem, 0o600)] if key_pem is not None else []
        out += [
            (self.path / CERT_FILE, issued.cert_pem, 0o644),
            (self.path / CHAIN_FILE, issued.chain_pem, 0o644),
            (self.path / FULLCHAIN_FILE, issued.fullchain_pem, 0o644),
        ]
        return out

    def make_folder(self, key_pem: bytes | None) -> None:
        ensure_dir(self.path, 0o700 if key_pem is not None else 0o755)

    def deliver(self, key_pem: bytes | None) -> Callable[[IssuedCertificate], Callable[[], None]]:
        def write(issued: IssuedCertificate) -> Callable[[], None]:
            self.make_folder(key_pem)
            written = atomic_write_many(self.contents(issued, key_pem), overwrite=self.force)
            return lambda: remove_all(written)

        return write


class FolderPerThing:
    """Delivery of a batch into ``OUT/THING/``: ``many`` writes a whole chunk's files at
    once, all or none (written, then all fsynced, then renamed)."""

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.out_dir = out_dir
        self.force = force

    def folder(self, issued: IssuedCertificate) -> OutputFolder:
        thing = issued.record.thing or issued.record.common_name
        return OutputFolder(self.out_dir / thing, force=self.force)

    def __call__(self, issued: IssuedCertificate) -> Callable[[], None]:
        return self.folder(issued).deliver(None)(issued)

    def many(self, issued: Sequence[IssuedCertificate]) -> list[Callable[[], None]]:
        files: list[tuple[Path, bytes, int]] = []
        for item in issued:
            folder = self.folder(item)
            folder.make_folder(None)
            files += folder.contents(item, None)
        written = atomic_write_many(files, overwrite=self.force)
        return [lambda: remove_all(written)]


def remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        remove_quietly(path)


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
) -> tuple[IssueRequest, Callable[[IssuedCertificate], Callable[[], None]]]:
    """The request and the delivery of ``--csr FILE | --generate-key --out DIR``.

    Refuses (before anything is signed) when both or neither are given and when the output
    files exist without ``force``. With ``--generate-key`` the key is made here and written
    with the certificate, never before it is recorded.
    """
    if (csr_file is None) == (not generate_key):
        raise InvalidInput("give exactly one of --csr FILE or --generate-key")
    output = OutputFolder(out_dir, with_key=generate_key, force=force)
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
    )
    return request, output.deliver(key_pem)
