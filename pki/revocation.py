"""Revocation (idempotent) and CRL generation (monotonic numbers) against the inventory."""

from __future__ import annotations

import datetime as dt
import fcntl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.backends import CertificateAuthority, CrlSigner
from pki.clock import Clock
from pki.crl import DEFAULT_NEXT_UPDATE, crl_number
from pki.errors import BackendError, FleetPkiError, InvalidInput, OperatorError
from pki.files import atomic_write, ensure_dir
from pki.home import Home
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
    with inventory.transaction() as conn:
        # The number is taken (and the CRL table locked) first, then the entries are read in
        # the same transaction: a higher-numbered CRL never misses an earlier revocation.
        number = inventory.next_crl_number(conn, issuer)
        entries = inventory.revoked_entries(issuer, now, conn)
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


def write_crl_file(path: Path, crl: x509.CertificateRevocationList) -> bool:
    """Atomically replace ``path`` with ``crl`` unless it already holds a CRL with the same
    or a higher number (a concurrent signer finished later). Returns whether it wrote."""
    ensure_dir(path.parent)
    number = crl_number(crl)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = crl_number(x509.load_pem_x509_crl(path.read_bytes()))
        except (OSError, ValueError, x509.ExtensionNotFound):
            current = None
        if current is not None and current >= number:
            return False
        atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def refresh_home_crl(
    home: Home, inventory: Inventory, ca: CertificateAuthority, clock: Clock, actor: str
) -> CrlResult:
    """Sign a new CRL with the home's nextUpdate setting and write ``HOME/crl/...``."""
    days = home.config().crl_next_update_days
    result = generate_crl(inventory, ca, clock, actor, dt.timedelta(days=days))
    write_crl_file(home.crl_path, result.crl)
    return result


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
    warm = getattr(ca, "load_signing_key", None)
    if callable(warm):
        warm()
    failures: dict[int, FleetPkiError] = {}
    done: list[RevocationResult] = []
    for serial in serials:
        try:
            done.append(revoke(inventory, ca, clock, serial, reason, actor))
        except FleetPkiError as exc:
            failures[serial] = exc
    results = tuple(done)
    crl = None
    crl_path = home.crl_path if signs_crl else None
    if signs_crl and any(
        r.changed or not crl_lists(home.crl_path, r.record.serial) for r in results
    ):
        crl = refresh_home_crl(home, inventory, ca, clock, actor)
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
    return CompletedRevocation(results, crl, crl_path, failures)
