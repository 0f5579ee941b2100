"""Lifecycle hooks other packages register through entry points.

``pki`` never imports ``devices`` or ``rotation``; when they need to act on a pki event
(a revocation must also revoke the IoT Core certificate and cut the device's MQTT
sessions), they register a callable under an entry-point group here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pki.errors import BackendError, FleetPkiError
from pki.model import CertificateRecord, RevocationReason

REVOCATION_HOOKS = "fleetpki.revocation_hooks"


@dataclass(frozen=True)
class RevocationEvent:
    """Passed to every revocation hook after the inventory and the CRL are updated."""

    record: CertificateRecord
    reason: RevocationReason
    home: Path
    crl_path: Path | None  # the re-signed CRL, or None with --no-crl
    database_url: str
    # the certificate that replaced this one, when rotation revoked it as superseded (the
    # device is connected with the replacement: its sessions are not cut)
    replaced_by: int | None = None


RevocationHook = Callable[[RevocationEvent], None]


def _hooks(group: str) -> list[tuple[str, Any]]:
    """The callables registered under an entry-point ``group``, by name."""
    from pki import plugins

    return [(ep.name, ep.load()) for ep in plugins.entry_points(group)]


def _warnings_of(
    hooks: str | list[tuple[str, Any]], label: str, call: Callable[[Any], Iterable[str] | None]
) -> list[str]:
    """Call every hook (of an entry-point group, each loaded in turn, or those given);
    what they return and what failed, a hook that does not even load included, come back
    as warnings: reported, never raised, since the work that called them is done whatever
    a hook does."""
    from pki import plugins

    loaders = (
        [(ep.name, ep.load) for ep in plugins.entry_points(hooks)]
        if isinstance(hooks, str)
        else [(name, lambda hook=hook: hook) for name, hook in hooks]
    )
    warnings: list[str] = []
    for name, load in loaders:
        try:
            warnings += list(call(load()) or ())
        except Exception as exc:
            warnings.append(f"{label} {name}: {type(exc).__name__}: {exc}")
    return warnings


def revocation_hooks() -> list[tuple[str, RevocationHook]]:
    return _hooks(REVOCATION_HOOKS)


def run_revocation_hooks(
    event: RevocationEvent, hooks: list[tuple[str, RevocationHook]] | None = None
) -> None:
    """Run every hook; the first failure is raised after all have had their turn."""
    failures: list[str] = []
    for name, hook in revocation_hooks() if hooks is None else hooks:
        try:
            hook(event)
        except FleetPkiError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # a hook's bug must not hide the others' work
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if failures:
        raise BackendError(
            "finish the revocation",
            "hook",
            f"{event.record.serial_hex} is revoked in the inventory, but " + "; ".join(failures),
        )


ISSUANCE_HOOKS = "fleetpki.issuance_hooks"


@dataclass(frozen=True)
class IssuanceEvent:
    """Passed to every issuance hook once certificates are committed (and delivered)."""

    records: tuple[CertificateRecord, ...]
    home: Path


IssuanceHook = Callable[[IssuanceEvent], None]


def issuance_hooks() -> list[tuple[str, IssuanceHook]]:
    return _hooks(ISSUANCE_HOOKS)


def issuance_notifier(home: Path) -> Callable[[tuple[CertificateRecord, ...]], list[str]]:
    """A callback for the issuer: runs the issuance hooks (looked up once) and returns
    what failed, as warnings — a certificate already committed and delivered stays
    issued whatever a hook does."""
    found: list[list[tuple[str, IssuanceHook]]] = []

    def notify(records: tuple[CertificateRecord, ...]) -> list[str]:
        if not found:
            found.append(issuance_hooks())
        event = IssuanceEvent(records, home)
        return _warnings_of(found[0], "issuance hook", lambda hook: hook(event))

    return notify


CRL_HOOKS = "fleetpki.crl_hooks"


@dataclass(frozen=True)
class CrlEvent:
    """Passed to every CRL hook once a CA's CRL is published in the home."""

    home: Path
    ca: str  # issuing | root
    number: int


CrlHook = Callable[[CrlEvent], None]


def run_crl_hooks(event: CrlEvent) -> list[str]:
    """Tell the CRL hooks (the running stand-ins reload it); what failed comes back as
    warnings: the CRL is published whatever a hook does."""
    return _warnings_of(CRL_HOOKS, "CRL hook", lambda hook: hook(event))


STATUS_HOOKS = "fleetpki.status_warnings"


@dataclass(frozen=True)
class StatusQuery:
    """Passed to every status hook by ``ca show``: the other packages' warnings (what the
    stand-ins serve, whether a rotation daemon runs) join the CA's own."""

    home: Path
    inventory: object  # pki.storage.Inventory (kept loose: hooks only read through it)
    now: dt.datetime


def status_warnings(query: StatusQuery) -> list[str]:
    """The warnings every status hook has for the operator; a failing hook is one more."""
    return _warnings_of(STATUS_HOOKS, "status hook", lambda hook: hook(query))
