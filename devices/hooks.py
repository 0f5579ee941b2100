"""Reactions of the device side to pki events (registered as entry points in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pki.errors import BackendError, FleetPkiError
from pki.home import Home
from pki.hooks import CrlEvent, IssuanceEvent, RevocationEvent, StatusQuery

if TYPE_CHECKING:
    from devices.standins.state import DevState


def _running(path: Path) -> tuple[Home, DevState] | None:
    """The home's stand-ins when they run. Their state file is looked for before their
    modules are imported, which a one-shot command without stand-ins never needs."""
    from devices.paths import state_file

    if not state_file(path).exists():
        return None
    from devices import standins

    home = Home(path)
    state = standins.running(home)
    return None if state is None else (home, state)


def on_revoked(event: RevocationEvent) -> None:
    """Called by ``fleetpki revoke`` after the inventory and the CRL are updated.

    1. The IoT Core certificate goes to REVOKED when fleetpki registered it.
    2. When the local stand-ins run: the broker re-reads the CRL (SIGHUP), the HTTPS
       endpoint picks it up before its next handshake, and the device's live MQTT
       sessions are cut (a reconnect is then refused by the CRL), except for a
       certificate rotation replaced (``replaced_by``).

    Every step is attempted; the failures are raised together at the end.
    """
    failures: list[str] = []
    try:
        from devices import iot

        iot.on_certificate_revoked(event.database_url, event.record.serial)
    except FleetPkiError as exc:
        failures.append(f"IoT Core: {exc}")
    try:
        _cut_local(event)
    except FleetPkiError as exc:
        failures.append(f"stand-ins: {exc}")
    if failures:
        raise BackendError("finish the revocation", "devices", "; ".join(failures))


def _cut_local(event: RevocationEvent) -> None:
    found = _running(event.home)
    if found is None:
        return
    from devices import standins

    home, state = found
    if event.crl_path is not None:
        standins.reload_crl(home, state)
    name = event.record.thing or event.record.common_name
    # A certificate rotation replaced: the device is already connected with its new
    # certificate under the same username, and a cut (by username) would throw it off.
    # (A session opened with the old key stays until it disconnects; keep the grace
    # period short, and revoke with key-compromise when a key may be stolen: that cuts.)
    if event.record.profile == "device" and event.replaced_by is None:
        standins.cut_sessions(state, name)


def on_issued(event: IssuanceEvent) -> None:
    """Called after device certificates are committed: when the local stand-ins run, the
    broker authorizes their things for their own topics (as the IoT policy would)."""
    from pki.issue.policy import PROBE_THING

    # fleetpki's own probe connects, and may do nothing else: no role on the broker
    things = [r.thing for r in event.records
              if r.profile == "device" and r.thing and r.thing != PROBE_THING]  # fmt: skip
    found = _running(event.home) if things else None
    if found is None:
        return
    from devices import standins

    standins.register_things(found[1], things)


def on_crl(event: CrlEvent) -> None:
    """Called whenever a CA's CRL is published in the home (``revoke``, ``crl``, the
    daemon): the running stand-ins read the new CRLs at once (the broker on SIGHUP, the
    HTTPS endpoint and the distribution points from their files)."""
    found = _running(event.home)
    if found is None:
        return
    from devices import standins

    standins.reload_crl(*found)


def status_warnings(query: StatusQuery) -> list[str]:
    """For ``ca show``: what the running stand-ins serve (a stale CRL, or not the home's)."""
    found = _running(query.home)
    if found is None:
        return []
    from devices.standins import served

    return served.served_crl(*found, query.now).problems
