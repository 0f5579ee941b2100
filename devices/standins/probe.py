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

import contextlib
import datetime as dt
import fcntl
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from devices.device import Credentials, client_context, refusal_reason
from pki.errors import BackendError
from pki.files import atomic_write, ensure_dir
from pki.home import Home
from pki.issue.policy import PROBE_THING
from pki.model import IssueRequest, KeyType, RevocationReason, Status

if TYPE_CHECKING:
    from pki.app import App

PROBE_DAYS = 1
RENEW_WITHIN = dt.timedelta(hours=6)
HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    cert: Path  # full chain
    key: Path
    serial: int


def folder(home: Home) -> Path:
    return home.path / "probe"


def current(app: App) -> Probe:
    """The probe identity, issued or replaced when it is missing, near its end, or its key
    and certificate do not match (a crash between the two writes). One process at a time
    (a lock in HOME/probe), so two never replace it together."""
    here = folder(app.home)
    ensure_dir(here, 0o700)
    with _locked(here / ".lock"):
        found = _load(here)
        now = app.now()
        if found is not None:
            cert, serial = found
            active = app.inventory().find(now=now, thing=PROBE_THING, status=Status.ACTIVE)
            if cert.not_valid_after_utc - now > RENEW_WITHIN and serial in {
                r.serial for r in active
            }:
                return Probe(here / "fullchain.pem", here / "key.pem", serial)
        return _replace(app, here)


@contextlib.contextmanager
def _locked(path: Path, timeout: float = 30.0) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for at most ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackendError("renew the probe", "probe",
                                       f"{path} stayed locked for {timeout:g} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _load(here: Path) -> tuple[x509.Certificate, int] | None:
    """The probe on disk, if its key and certificate are a pair."""
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificates((here / "fullchain.pem").read_bytes())[0]
        key = serialization.load_pem_private_key((here / "key.pem").read_bytes(), None)
    except (OSError, ValueError, TypeError, IndexError):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, cert.serial_number


def _replace(app: App, here: Path) -> Probe:
    from pki.issue.delivery import make_key_and_csr
    from pki.revocation.revoke import revoke_and_publish

    key_pem, csr = make_key_and_csr(KeyType.EC_P256, PROBE_THING)
    request = IssueRequest("device", PROBE_THING, csr, days=PROBE_DAYS, actor="probe", probe=True)
    issued = app.issuer().issue(request)  # recorded (committed) first, then written here
    # two files: a crash between them leaves a pair that does not match, which _load
    # refuses (the next check issues a new probe; the unused one is revoked below then)
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


class CanaryNotRun(BackendError):
    """The canary could not tell: the broker was not reached, or its own certificate was
    not trusted (nothing a CRL repair mends)."""


# a server's verdict on a client certificate: what a stale or wrong CRL/CA file gives
REFUSALS = ("revoked", "expired", "unknown-ca", "no-certificate")


def handshake(probe: Probe, port: int, ca_file: Path, host: str = "127.0.0.1") -> str | None:
    """A mutual TLS 1.2 handshake with the listener on ``port`` (the server's verdict on
    the client certificate arrives during it): None when accepted, else the server's
    refusal; ``CanaryNotRun`` when the handshake says nothing about the client
    certificate (the server unreachable, its certificate not trusted here, a timeout)."""
    try:
        ctx = client_context(Credentials(PROBE_THING, probe.cert, probe.key, ca_file))
        with (
            socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass  # TLS 1.2: the handshake's end is the server's verdict
    except ssl.SSLCertVerificationError as exc:
        raise CanaryNotRun("check the broker", "probe",
                           f"its certificate is not trusted: {exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        reason = refusal_reason(exc)
        if reason in REFUSALS:
            return reason
        raise CanaryNotRun("check the broker", "probe", f"{reason}: {exc}") from None
    return None
