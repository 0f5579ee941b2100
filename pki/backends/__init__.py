"""CA backends: a small core interface, optional capabilities as separate interfaces."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from pki.issue.policy import CertificatePlan
from pki.model import RevocationReason


@dataclass(frozen=True)
class SigningRequest:
    """Everything a backend needs to sign one end-entity certificate."""

    plan: CertificatePlan
    public_key: CertificatePublicKeyTypes
    csr: x509.CertificateSigningRequest
    serial: int


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: RevocationReason


class CertificateAuthority(Protocol):
    """The core every backend implements."""

    @property
    def name(self) -> str:
        """Short backend name recorded in the inventory (``local``, ``aws-pca``)."""
        ...

    def issue(self, request: SigningRequest) -> x509.Certificate: ...

    def revoke(self, serial: int, reason: RevocationReason, when: dt.datetime) -> None: ...

    def chain(self) -> tuple[x509.Certificate, ...]:
        """Issuing CA first, root last."""
        ...


@runtime_checkable
class InProcessSigner(Protocol):
    """Optional: backends that sign in this process with a key they hold. Signing is CPU
    work here (a batch scales with processes, not requests in flight), and the key is
    unlocked once, before forking workers; a certificate this process just signed needs
    no second signature check."""

    def load_signing_key(self) -> None:
        """Unlock the signing key now (a wrong passphrase is found before any change)."""
        ...


@runtime_checkable
class CrlSigner(Protocol):
    """Optional: backends that can sign a CRL for their issuing CA on demand."""

    def sign_crl(
        self,
        entries: Sequence[RevokedEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList: ...


@runtime_checkable
class RootCrlSigner(Protocol):
    """Optional: backends holding the root CA's key (possibly offline), which can sign the
    root's CRL: the subordinate CAs it revoked. Relying parties that check revocation at
    every level of the chain (nginx, Node, Java, ``openssl -crl_check_all``) need it."""

    def sign_root_crl(
        self,
        entries: Sequence[RevokedEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList: ...

    def root_key_available(self) -> bool: ...
