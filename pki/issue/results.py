"""What issuance hands back: one request's outcome, a batch's report. Shared by the
issuer, its fork pool and every front end."""

from __future__ import annotations

from dataclasses import dataclass, field

from pki.errors import FleetPkiError
from pki.model import IssuedCertificate


@dataclass(frozen=True)
class Failure:
    name: str
    error: FleetPkiError


@dataclass
class BatchReport:
    issued: list[IssuedCertificate] = field(default_factory=list)  # empty with keep=False
    failed: list[Failure] = field(default_factory=list)
    issued_count: int = 0
    already: list[str] = field(default_factory=list)  # delivered by an earlier run


@dataclass(frozen=True)
class Outcome:
    """What signing one request produced, without touching storage (picklable).

    Exactly one of: ``issued`` (good), ``error`` (refused before signing), or
    ``quarantined`` (signed, but the backend's certificate does not match the request).
    """

    name: str
    issued: IssuedCertificate | None = None
    error: FleetPkiError | None = None
    quarantined: IssuedCertificate | None = None
