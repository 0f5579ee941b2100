"""Revocation (idempotent) and CRL generation (monotonic numbers) against the inventory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from pki.backends import CertificateAuthority, CrlSigner
from pki.clock import Clock
from pki.crl import DEFAULT_NEXT_UPDATE
from pki.errors import BackendError, InvalidInput, OperatorError
from pki.inventory import AuditEvent, Inventory
from pki.model import CertificateRecord, RevocationReason, Status, isoformat
from pki.profiles import CA_PROFILES


@dataclass(frozen=True)
class RevocationResult:
    record: CertificateRecord
    changed: bool  # False when the certificate was already revoked (the first reason stands)


@dataclass(frozen=True)
class CrlResult:
    crl: x509.CertificateRevocationList
    number: int
    entries: int


def revoke(
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    serial: int,
    reason: RevocationReason,
    actor: str,
) -> RevocationResult:
    record = inventory.get(serial)
    if record.profile in CA_PROFILES:
        raise OperatorError(
            f"serial {record.serial_hex} is the {record.profile} certificate; "
            "'fleetpki revoke' only revokes device and server certificates"
        )
    if record.status is Status.REVOKED:
        return RevocationResult(record, changed=False)
    now = clock.now()
    with inventory.transaction() as conn:
        changed = inventory.mark_revoked(conn, serial, now, reason)
        if changed:
            ca.revoke(serial, reason, now)
            inventory.audit(
                conn,
                [
                    AuditEvent(
                        now,
                        actor,
                        "revoke",
                        record.serial_hex,
                        {"reason": reason.value, "thing": record.thing, "profile": record.profile},
                    )
                ],
            )
    return RevocationResult(inventory.get(serial), changed)


def generate_crl(
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    actor: str,
    next_update: dt.timedelta = DEFAULT_NEXT_UPDATE,
) -> CrlResult:
    """Sign a full CRL of the issuing CA's revoked, unexpired certificates.

    The CRL number is one more than any number used before for this issuer, taken and
    recorded in the same transaction.
    """
    if not isinstance(ca, CrlSigner):
        raise OperatorError(
            f"the {ca.name} backend publishes its own CRLs; fleetpki cannot sign one for it"
        )
    if next_update < dt.timedelta(hours=1) or next_update > dt.timedelta(days=365):
        raise InvalidInput("--next-update must be between 1h and 365d")
    now = clock.now()
    issuer = ca.chain()[0].subject.rfc4514_string()
    entries = inventory.revoked_entries(issuer, now)
    with inventory.transaction() as conn:
        number = inventory.next_crl_number(conn, issuer)
        try:
            crl = ca.sign_crl(entries, number, now, now + next_update)
        except (ValueError, TypeError) as exc:
            raise BackendError("sign the CRL", ca.name, str(exc)) from None
        inventory.record_crl(conn, issuer, number, now, now + next_update, len(entries), now)
        inventory.audit(
            conn,
            [
                AuditEvent(
                    now,
                    actor,
                    "crl",
                    None,
                    {
                        "number": number,
                        "entries": len(entries),
                        "next_update": isoformat(now + next_update),
                    },
                )
            ],
        )
    return CrlResult(crl=crl, number=number, entries=len(entries))
