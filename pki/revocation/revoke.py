"""Revocation: idempotent (the first reason stands), the backend told first, the row and
its audit event in one transaction; then one CRL for all, and the revocation hooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pki import faults
from pki.backends import CertificateAuthority, CrlSigner, InProcessSigner
from pki.clock import Clock
from pki.errors import FleetPkiError, OperatorError
from pki.home import Home
from pki.issue.profiles import CA_PROFILES
from pki.model import CertificateRecord, RevocationReason, Status
from pki.revocation.signing import CrlResult, refresh_crls
from pki.storage import AuditEvent, Inventory


@dataclass(frozen=True)
class RevocationResult:
    record: CertificateRecord
    changed: bool  # False when the certificate was already revoked (the first reason stands)


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
    # The backend first, outside any transaction: a remote CA's call (rate-limited, retried)
    # must not hold the inventory's write lock. Revoking twice there is harmless (AWS's
    # "already revoked" is success), so a failure after it is finished by running again.
    ca.revoke(serial, reason, now)
    with inventory.transaction() as conn:
        changed = inventory.mark_revoked(conn, serial, now, reason)
        if changed:
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
    faults.reach(faults.REVOKE_COMMITTED)
    return RevocationResult(inventory.get(serial), changed)


def crl_lists(path: Path, serial: int) -> bool:
    """Whether the CRL file at ``path`` exists and lists ``serial``."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return False
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


@dataclass(frozen=True)
class CompletedRevocation:
    results: tuple[RevocationResult, ...]
    crl: CrlResult | None  # the CRL signed for them, if one was
    crl_path: Path | None  # the home CRL listing them (None when the backend signs its own)
    # serial -> what failed for it (the revocation itself, or a hook); only with
    # raise_failures=False, else the first failure is raised once all were attempted
    failures: dict[int, FleetPkiError] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. the root CRL is due and its key is offline


def revoke_and_publish(
    home: Home,
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    serials: list[int],
    reason: RevocationReason,
    actor: str,
    *,
    sign_crl: bool = True,
    replaced_by: Mapping[int, int] | None = None,
    raise_failures: bool = True,
) -> CompletedRevocation:
    """Revoke, re-sign the home CRL once, then run the revocation hooks.

    Idempotent as a whole: on a repeat, the CRL is re-signed only if it does not list the
    certificates yet and the hooks run again (they are idempotent), so a revocation that
    was interrupted half way is finished by running it again. A wrong CA passphrase is
    found before anything changes. Every certificate is attempted even when one fails;
    ``replaced_by`` names the replacement of a certificate rotation superseded.
    """
    from pki.hooks import RevocationEvent, revocation_hooks, run_revocation_hooks

    signs_crl = sign_crl and isinstance(ca, CrlSigner)
    # the CA passphrase is checked before anything changes, with --no-crl too: whoever
    # may not sign for the CA may not revoke for it either
    if isinstance(ca, InProcessSigner):
        ca.load_signing_key()
    failures: dict[int, FleetPkiError] = {}
    done: list[RevocationResult] = []
    for serial in serials:
        try:
            done.append(revoke(inventory, ca, clock, serial, reason, actor))
        except FleetPkiError as exc:
            failures[serial] = exc
    results = tuple(done)
    crl = None
    warnings: tuple[str, ...] = ()
    crl_path = home.crl_path if signs_crl else None
    if signs_crl and any(
        r.changed or not crl_lists(home.crl_path, r.record.serial) for r in results
    ):
        refreshed = refresh_crls(home, inventory, ca, clock, actor, issuing=True)
        crl, warnings = refreshed.of("issuing"), refreshed.warnings
    hooks = revocation_hooks() if results else []  # looked up once, not per certificate
    for result in results:
        record = result.record
        event = RevocationEvent(
            record,
            record.revocation_reason or reason,
            home.path,
            crl_path,
            home.database_url,
            (replaced_by or {}).get(record.serial),
        )
        try:
            run_revocation_hooks(event, hooks)
        except FleetPkiError as exc:
            failures[record.serial] = exc
    if failures and raise_failures:
        raise next(iter(failures.values()))
    return CompletedRevocation(results, crl, crl_path, failures, warnings)
