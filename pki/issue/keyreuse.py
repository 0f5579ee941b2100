"""Which certificate a public key may get: the rule that makes a retried request find its
certificate instead of signing a second one, and keeps one key from serving two
identities. Pure: the caller looks up the active certificates bound to the key.

- a request with the same thing (or server name), profile and key as a certificate that
  is still active gets that certificate back, delivered again — however long ago it was
  issued, and whether or not it was delivered (an unanswered COMMIT, a crash);
- a replacement (a rotation: ``replacing`` names the certificate it replaces) must bring
  a key bound to no active certificate, the replaced one included; if the key is bound to
  another active certificate of the same thing and profile, that is the certificate
  already issued for this replacement (a retried one): it is returned;
- any other request whose key is bound to an active certificate of another thing or
  profile is refused (``key-reused``);
- ``--allow-key-reuse`` (audited) signs a new certificate for a key that is bound already,
  to this identity or another (never for a replacement).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from pki.issue.check import spki
from pki.issue.policy import Violation
from pki.model import CertificateRecord, IssueRequest


def key_id(key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (hex): what the inventory indexes."""
    return hashlib.sha256(spki(key)).hexdigest()


@dataclass(frozen=True)
class KeyDecision:
    existing: CertificateRecord | None = None  # return this certificate, sign nothing
    violation: Violation | None = None  # refuse
    reused: bool = False  # sign, the key being bound elsewhere (--allow-key-reuse)


def _same_identity(request: IssueRequest, record: CertificateRecord) -> bool:
    name = record.thing if record.profile == "device" else record.common_name
    return record.profile == request.profile and name == request.name


def decide(request: IssueRequest, bound: Sequence[CertificateRecord]) -> KeyDecision:
    """``bound``: the active certificates whose key is the request's."""
    if not bound:
        return KeyDecision()
    mine = [r for r in bound if _same_identity(request, r)]
    if request.replacing is not None and any(r.serial == request.replacing for r in bound):
        return KeyDecision(violation=Violation(
            "key-reused",
            "a replacement needs a new key: this CSR's key is the one of the certificate it "
            "replaces",
        ))  # fmt: skip
    if request.allow_key_reuse and request.replacing is None:
        return KeyDecision(reused=True)  # a new certificate for this key, on purpose
    if mine:  # for a replacement: the certificate already issued for it
        return KeyDecision(existing=mine[-1])
    other = next(r for r in bound if not _same_identity(request, r))
    owner = other.thing or other.common_name
    return KeyDecision(violation=Violation(
        "key-reused",
        f"this CSR's key is bound to the active {other.profile} certificate "
        f"{other.serial_hex} of {owner!r}; make a new key (or --allow-key-reuse)",
    ))  # fmt: skip
