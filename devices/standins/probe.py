"""fleetpki's own client identity for canary handshakes, and the handshake itself.

Mosquitto exposes no loaded CRL: the file it reads can be the home's current one while the
broker still holds a stale one (a SIGHUP that never arrived), and then it refuses every
device. A fresh certificate of our own that the broker refuses is the evidence. The probe
is the device ``fleetpki-probe`` (a name the policy reserves for fleetpki; no broker
permissions), one day long, its key made here (HOME/probe/key.pem, 0600), recorded like
every certificate, replaced six hours before it expires (the one it replaces is revoked
as superseded), and left out of the fleet's plans and counts.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from devices.device import Credentials, client_context, refusal_reason
from pki.files import atomic_write, ensure_dir
from pki.home import Home
from pki.issue.policy import PROBE_THING
from pki.model import IssueRequest, KeyType, RevocationReason, Status

if TYPE_CHECKING:
    from pki.app import App

PROBE_DAYS = 1
RENEW_WITHIN = dt.timedelta(hours=6)
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Probe:
    cert: Path  # full chain
    key: Path
    serial: int


def folder(home: Home) -> Path:
    return home.path / "probe"


def current(app: App) -> Probe:
    """The probe identity, issued or replaced when it is missing or near its end."""
    here = folder(app.home)
    found = _load(here)
    now = app.now()
    inventory = app.inventory()
    if found is not None:
        cert, serial = found
        record = inventory.find(now=now, thing=PROBE_THING, status=Status.ACTIVE)
        if cert.not_valid_after_utc - now > RENEW_WITHIN and serial in {
            r.serial for r in record
        }:
            return Probe(here / "fullchain.pem", here / "key.pem", serial)
    return _replace(app, here)


def _load(here: Path) -> tuple[x509.Certificate, int] | None:
    try:
        cert = x509.load_pem_x509_certificates((here / "fullchain.pem").read_bytes())[0]
        (here / "key.pem").stat()
    except (OSError, ValueError, IndexError):
        return None
    return cert, cert.serial_number


def _replace(app: App, here: Path) -> Probe:
    from pki.issue.delivery import make_key_and_csr
    from pki.revocation.revoke import revoke_and_publish

    key_pem, csr = make_key_and_csr(KeyType.EC_P256, PROBE_THING)
    request = IssueRequest("device", PROBE_THING, csr, days=PROBE_DAYS, actor="probe", probe=True)
    issued = app.issuer().issue(request)  # recorded (committed) first, then written here
    ensure_dir(here, 0o700)
    atomic_write(here / "key.pem", key_pem, 0o600)
    atomic_write(here / "fullchain.pem", issued.fullchain_pem, 0o644)
    new = issued.record.serial
    older = [
        r.serial
        for r in app.inventory().find(now=app.now(), thing=PROBE_THING, status=Status.ACTIVE)
        if r.serial != new
    ]
    if older:  # the probe it replaces, and any a crash left behind
        revoke_and_publish(app.home, app.inventory(), app.ca(), app.clock, older,
                           RevocationReason.SUPERSEDED, "probe",
                           replaced_by=dict.fromkeys(older, new), raise_failures=False)  # fmt: skip
    return Probe(here / "fullchain.pem", here / "key.pem", new)


def handshake(probe: Probe, port: int, ca_file: Path, host: str = "127.0.0.1") -> str | None:
    """A mutual TLS 1.2 handshake with the listener on ``port`` (the server's verdict on
    the client certificate arrives during it): None when accepted, else the refusal."""
    ctx = client_context(Credentials(PROBE_THING, probe.cert, probe.key, ca_file))
    try:
        with (
            socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.settimeout(HANDSHAKE_TIMEOUT)
            tls.recv(0)  # anything the server says after its Finished (TLS 1.2: nothing)
    except (ssl.SSLError, OSError) as exc:
        return refusal_reason(exc)
    return None
