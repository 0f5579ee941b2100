"""What issuance hands back and takes: the delivery callbacks, one request's outcome, a
batch's report. Shared by the issuer, its fork pool and every front end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pki.errors import FleetPkiError
from pki.model import IssuedCertificate

# Delivery writes the certificate somewhere (files, a response) and returns how to undo it.
Deliver = Callable[[IssuedCertificate], Callable[[], None]]


@runtime_checkable
class BatchDelivery(Protocol):
    """Optional: a delivery that writes a whole chunk at once (all or none)."""

    def __call__(self, issued: IssuedCertificate) -> Callable[[], None]: ...

    def many(self, issued: Sequence[IssuedCertificate]) -> list[Callable[[], None]]: ...


@dataclass(frozen=True)
class Failure:
    name: str
    error: FleetPkiError


@dataclass
class BatchReport:
    issued: list[IssuedCertificate] = field(default_factory=list)  # empty with keep=False
    failed: list[Failure] = field(default_factory=list)
    issued_count: int = 0


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
