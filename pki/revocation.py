"""Revocation (idempotent) and CRL generation (monotonic numbers) against the inventory."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509

from pki.backends import CertificateAuthority, CrlSigner, RootCrlSigner
from pki.clock import Clock
from pki.crl import DEFAULT_NEXT_UPDATE, crl_health
from pki.errors import BackendError, FleetPkiError, InvalidInput, OperatorError
from pki.home import Home
from pki.model import CertificateRecord, RevocationReason, Status, isoformat
from pki.policy import BACKDATE
from pki.profiles import CA_PROFILES
from pki.storage import AuditEvent, Inventory

log = logging.getLogger("fleetpki.crl")


@dataclass(frozen=True)
class RevocationResult:
    record: CertificateRecord
    changed: bool  # False when the certificate was already revoked (the first reason stands)


@dataclass(frozen=True)
class CrlResult:
    crl: x509.CertificateRevocationList
    number: int
    entries: int
    ca: str = "issuing"  # which CA signed it: issuing | root
    # the CRL number already published (a file ahead of the inventory, e.g. an inventory
    # restored from a backup): this CRL's number was moved past it
    resynced_from: int | None = None
    written: bool = True  # False when a CRL with a higher number was published meanwhile


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


MAX_NEXT_UPDATE = {"issuing": dt.timedelta(days=365), "root": dt.timedelta(days=730)}


def generate_crl(
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    actor: str,
    next_update: dt.timedelta = DEFAULT_NEXT_UPDATE,
    *,
    which: str = "issuing",
    backdate: dt.timedelta = BACKDATE,
    published_number: int | None = None,
) -> CrlResult:
    """Sign a full CRL of CA ``which`` (``issuing``: its revoked, unexpired leaves;
    ``root``: the subordinate CAs it revoked).

    The CRL number is one more than any number used before for this CA, and more than
    ``published_number`` (what relying parties already have), taken and recorded in the
    same transaction. ``thisUpdate`` is ``backdate`` in the past, like ``notBefore``:
    a relying party whose clock is a little behind still accepts it.
    """
    if which == "root":
        if not isinstance(ca, RootCrlSigner):
            raise OperatorError(
                f"the {ca.name} backend keeps its root key itself; fleetpki cannot sign "
                "the root's CRL"
            )
    elif not isinstance(ca, CrlSigner):
        raise OperatorError(
            f"the {ca.name} backend publishes its own CRLs; fleetpki cannot sign one for it"
        )
    longest = MAX_NEXT_UPDATE[which]
    if next_update < dt.timedelta(hours=1) or next_update > longest:
        raise InvalidInput(f"--next-update must be between 1h and {longest.days}d")
    now = clock.now()
    chain = ca.chain()
    issuer = (chain[-1] if which == "root" else chain[0]).subject.rfc4514_string()
    this_update = now - backdate
    with inventory.transaction() as conn:
        # The number is taken (and the CRL table locked) first, then the entries are read in
        # the same transaction: a higher-numbered CRL never misses an earlier revocation.
        number = inventory.next_crl_number(conn, issuer)
        resynced = None
        if published_number is not None and published_number >= number:
            resynced, number = published_number, published_number + 1
        entries = inventory.revoked_entries(issuer, now, conn)
        try:
            if which == "root":
                assert isinstance(ca, RootCrlSigner)
                crl = ca.sign_root_crl(entries, number, this_update, now + next_update)
            else:
                assert isinstance(ca, CrlSigner)
                crl = ca.sign_crl(entries, number, this_update, now + next_update)
        except (ValueError, TypeError) as exc:
            raise BackendError("sign the CRL", ca.name, str(exc)) from None
        inventory.record_crl(
            conn, issuer, number, this_update, now + next_update, len(entries), now
        )
        detail: dict[str, object] = {
            "ca": which,
            "number": number,
            "entries": len(entries),
            "next_update": isoformat(now + next_update),
        }
        if resynced is not None:
            detail["resynced_from_published"] = resynced
        inventory.audit(conn, [AuditEvent(now, actor, "crl", None, detail)])
    return CrlResult(crl=crl, number=number, entries=len(entries), ca=which, resynced_from=resynced)


def sign_and_publish(
    home: Home,
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    actor: str,
    *,
    which: str = "issuing",
    next_update: dt.timedelta | None = None,
) -> CrlResult:
    """Sign CA ``which``'s CRL with the home's settings and publish it in ``HOME/crl``
    (its own file, DER copy, combined file). The number always goes past the published
    one: the inventory is never behind what relying parties have."""
    config = home.config()
    if next_update is None:
        days = config.root_crl_next_update_days if which == "root" else config.crl_next_update_days
        next_update = dt.timedelta(days=days)
    files = home.crl_files
    result = generate_crl(
        inventory,
        ca,
        clock,
        actor,
        next_update,
        which=which,
        backdate=config.crl_backdate,
        published_number=files.number(which),
    )
    if not files.write(which, result.crl):
        return replace(result, written=False)
    from pki.hooks import CrlEvent, run_crl_hooks

    for warning in run_crl_hooks(CrlEvent(home.path, which, result.number)):
        log.warning("%s", warning)
    return result


@dataclass(frozen=True)
class CrlRefresh:
    """What keeping a home's CRLs fresh did: the CRLs signed, and what needs the
    operator (a root CRL due while the root key is offline, say)."""

    signed: tuple[CrlResult, ...] = ()
    warnings: tuple[str, ...] = ()

    def of(self, which: str) -> CrlResult | None:
        return next((r for r in self.signed if r.ca == which), None)


def refresh_crls(
    home: Home,
    inventory: Inventory,
    ca: CertificateAuthority,
    clock: Clock,
    actor: str,
    *,
    issuing: bool = False,
) -> CrlRefresh:
    """Re-sign the issuing CA's CRL (with ``issuing``, or when it is due: two thirds of
    its validity passed) and the root's when it is due and the root key is at hand.

    The root key may be kept offline: then a due root CRL is a warning naming
    ``fleetpki crl --root``, never a failure of the revocation that asked.
    """
    files = home.crl_files
    signed: list[CrlResult] = []
    warnings: list[str] = []
    now = clock.now()
    if isinstance(ca, CrlSigner) and (
        issuing or crl_health("issuing", files.load("issuing"), now).needs_signing
    ):
        signed.append(sign_and_publish(home, inventory, ca, clock, actor))
    if isinstance(ca, RootCrlSigner):
        root = crl_health("root", files.load("root"), now)
        if root.needs_signing:
            try:
                if not ca.root_key_available():
                    raise OperatorError("the root key is offline")
                signed.append(sign_and_publish(home, inventory, ca, clock, actor, which="root"))
            except FleetPkiError as exc:  # the key offline or unusable: never fatal here
                warnings.append(
                    f"{root.message(now)}; re-sign it with 'fleetpki crl --root' ({exc})"
                )
    return CrlRefresh(tuple(signed), tuple(warnings))


def refresh_home_crl(
    home: Home, inventory: Inventory, ca: CertificateAuthority, clock: Clock, actor: str
) -> CrlResult:
    """Sign a new issuing CRL now (and the root's, if due) and publish them in the home."""
    done = refresh_crls(home, inventory, ca, clock, actor, issuing=True)
    result = done.of("issuing")
    assert result is not None
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
