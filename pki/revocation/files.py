"""The CRLs a home publishes: one file per CA, a combined file, DER copies for HTTP.

Relying parties differ in what they read (see ``docs/crl.md``):

- ``HOME/crl/<ca>.crl.pem`` — one CA's current CRL (PEM); an array of these is what
  Node's ``tls`` ``crl`` option needs (it reads only the first CRL of a string);
- ``HOME/crl/combined.crl.pem`` — every CA's current CRL, concatenated: nginx
  ``ssl_crl``, ``openssl verify -CRLfile``, Java's ``CertificateFactory.generateCRLs``,
  GnuTLS and Mosquitto read it whole, and the tools that check revocation at every level
  of the chain need the root's CRL as much as the issuing CA's;
- ``HOME/crl/<ca>.crl`` — the same CRL in DER, what an HTTP CRL distribution point serves.

A file is only ever replaced by a CRL with a higher number (a concurrent signer that
finished later loses), every write is atomic, and the combined file is rebuilt under the
same lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.files import atomic_write, ensure_dir
from pki.revocation.crl import crl_number

CRL_CAS = ("issuing", "root")  # in the order the combined file lists them
COMBINED = "combined.crl.pem"


@dataclass(frozen=True)
class CrlFiles:
    folder: Path

    def pem(self, ca: str) -> Path:
        return self.folder / f"{ca}.crl.pem"

    def der(self, ca: str) -> Path:
        return self.folder / f"{ca}.crl"

    @property
    def combined(self) -> Path:
        return self.folder / COMBINED

    def load(self, ca: str) -> x509.CertificateRevocationList | None:
        """CA ``ca``'s published CRL, or None when there is none (or it is unreadable)."""
        try:
            return x509.load_pem_x509_crl(self.pem(ca).read_bytes())
        except (OSError, ValueError):
            return None

    def number(self, ca: str) -> int | None:
        crl = self.load(ca)
        if crl is None:
            return None
        try:
            return crl_number(crl)
        except x509.ExtensionNotFound:
            return None

    def current(self) -> dict[str, x509.CertificateRevocationList]:
        """Every CA's published CRL, by CA name."""
        found = {ca: self.load(ca) for ca in CRL_CAS}
        return {ca: crl for ca, crl in found.items() if crl is not None}

    def write(self, ca: str, crl: x509.CertificateRevocationList) -> bool:
        """Publish ``crl`` as CA ``ca``'s CRL (PEM, DER, combined) unless a CRL with the
        same or a higher number is there already. Returns whether it wrote."""
        number = crl_number(crl)
        with self._locked():
            current = self.number(ca)
            if current is not None and current >= number:
                return False
            atomic_write(self.der(ca), crl.public_bytes(serialization.Encoding.DER), 0o644)
            atomic_write(self.pem(ca), crl.public_bytes(serialization.Encoding.PEM), 0o644)
            self._write_combined()
        return True

    def rebuild_combined(self) -> None:
        with self._locked():
            self._write_combined()

    def _write_combined(self) -> None:
        parts = [crl.public_bytes(serialization.Encoding.PEM) for crl in self.current().values()]
        if parts:
            atomic_write(self.combined, b"".join(parts), 0o644)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_dir(self.folder)
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
