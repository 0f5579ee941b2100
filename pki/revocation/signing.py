"""Signing CRLs: each CA's own (the issuing CA's revoked leaves, the root's revoked
subordinates) with monotonic numbers that never fall behind what was published, a
backdated ``thisUpdate``, published in the home (``pki.revocation.files``) and handed to
the CRL hooks; and keeping them fresh (re-signed at two thirds of their validity)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from pki import faults
from pki.backends import CertificateAuthority, CrlSigner, RootCrlSigner
from pki.clock import Clock
from pki.errors import BackendError, FleetPkiError, InvalidInput, OperatorError
from pki.files import read_regular
from pki.home import Home
from pki.issue.policy import BACKDATE
from pki.model import isoformat
from pki.revocation.crl import DEFAULT_NEXT_UPDATE, crl_health
from pki.storage import AuditEvent, Inventory
from pki.text import escape_controls

if TYPE_CHECKING:
    from pki.app import App

log = logging.getLogger("fleetpki.crl")


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
    at_least: int | None = None,
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
        published_number=max(
            (n for n in (files.number(which), at_least) if n is not None), default=None
        ),
    )
    faults.reach(faults.CRL_NUMBERED)
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


@dataclass(frozen=True)
class SignedOnRequest:
    result: CrlResult
    data: bytes  # the CRL in the format asked for
    warnings: tuple[str, ...]


def sign_on_request(
    app: App,
    which: str,
    next_update: dt.timedelta | None,
    out_file: Path | None,
    fmt: str,
) -> SignedOnRequest:
    """``fleetpki crl``: sign CA ``which``'s CRL now and publish it in the home (for the
    issuing CA, the root's too when it is due and its key is at hand); with ``out_file``
    write it there as well. ``out_file`` is checked before a CRL number is spent, and a CRL
    there of the same CA is never replaced by a lower number."""
    import os

    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.files import atomic_write, refuse_special
    from pki.revocation.crl import crl_number

    floor = None
    if out_file is not None:
        if not os.access(out_file.parent, os.W_OK):
            raise InvalidInput(
                f"cannot write --out {out_file}: {out_file.parent} is not a writable folder"
            )
        refuse_special(out_file)
        floor = _number_in(out_file, app.ca(), which, crl_number)
    ca, inventory, home = app.ca(), app.inventory(), app.home
    result = sign_and_publish(
        home, inventory, ca, app.clock, app.actor, which=which, next_update=next_update,
        at_least=floor,
    )  # fmt: skip
    warnings: tuple[str, ...] = ()
    if which == "issuing":
        warnings = refresh_crls(home, inventory, ca, app.clock, app.actor).warnings
    data = result.crl.public_bytes(Encoding.PEM if fmt == "pem" else Encoding.DER)
    if out_file is not None:
        atomic_write(out_file, data, 0o644)
    return SignedOnRequest(result, data, warnings)


def _number_in(
    path: Path, ca: CertificateAuthority, which: str, number: Callable[..., int]
) -> int | None:
    """The CRL number of a CRL of CA ``which`` already at ``path`` (None: nothing there,
    or not a CRL). A CRL another CA signed (another name, or the same name and another
    key) is refused: ``--out`` would replace another CA's CRL."""
    try:
        data = read_regular(path, 64 << 20, "--out")
    except (OSError, InvalidInput):
        return None
    try:
        pem = data.startswith(b"-----")
        crl = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
    except ValueError:
        return None
    chain = ca.chain()
    signer = chain[-1] if which == "root" else chain[0]
    key = signer.public_key()
    if crl.issuer != signer.subject or not crl.is_signature_valid(key):  # type: ignore[arg-type]
        other = escape_controls(crl.issuer.rfc4514_string())
        raise InvalidInput(
            f"--out {path} holds a CRL of another CA ({other}); refusing to replace it: "
            "give another file"
        )
    try:
        return number(crl)
    except x509.ExtensionNotFound:
        return None
