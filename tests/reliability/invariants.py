"""What must hold after any crash, and after the re-run that completes it: every delivered
certificate has a row, every row is delivered or withdrawn, no pending delivery or
temporary file is left, CRL numbers only go up."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.model import Status
from pki.storage import Inventory

KILLED = -9


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def fleetpki(
    *argv: str, fault: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> Run:
    """The real command in its own process (in ``env``), killed by itself at ``fault``."""
    env = dict(os.environ if env is None else env)
    env.pop("FLEETPKI_FAULT", None)
    if fault:
        env["FLEETPKI_FAULT"] = fault
    done = subprocess.run(
        [sys.executable, "-m", "pki", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def inventory(home: Path) -> Inventory:
    url = os.environ.get("FLEETPKI_DATABASE_URL") or f"sqlite:///{home / 'inventory.db'}"
    return Inventory.open(url)


def leaves(home: Path) -> dict[int, Status]:
    inv = inventory(home)
    try:
        now = dt.datetime.now(dt.UTC)
        return {r.serial: r.status for r in inv.find(now=now)}
    finally:
        inv.close()


def pending(home: Path) -> int:
    inv = inventory(home)
    try:
        return len(inv.pending())
    finally:
        inv.close()


def delivered(out: Path) -> dict[Path, x509.Certificate]:
    return {p: x509.load_pem_x509_certificate(p.read_bytes()) for p in out.rglob("cert.pem")}


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*.tmp")]


def check_recorded(home: Path, outs: Sequence[Path]) -> dict[int, Status]:
    """After a crash (before any re-run): no certificate outside fleetpki without a row."""
    rows = leaves(home)
    for out in outs:
        for path, cert in delivered(out).items():
            assert cert.serial_number in rows, f"{path}: delivered, not recorded"
    return rows


def check_complete(home: Path, outs: Sequence[Path], earlier: Iterable[int] = ()) -> None:
    """After the re-run: everything recorded is delivered (now, or ``earlier`` and since
    replaced with --force) or withdrawn, nothing left over; every folder's key (where
    there is one) belongs to its certificate."""
    rows = check_recorded(home, outs)
    assert pending(home) == 0
    on_disk = {c.serial_number for out in outs for c in delivered(out).values()}
    on_disk |= set(earlier)
    for serial, status in rows.items():
        assert serial in on_disk or status is Status.REVOKED, f"{serial:x}: recorded, undelivered"
    for out in outs:
        assert temporaries(out) == []
        for path, cert in delivered(out).items():
            key_file = path.with_name("key.pem")
            if key_file.exists():
                key = serialization.load_pem_private_key(key_file.read_bytes(), None)
                assert key.public_key() == cert.public_key(), f"{path}: key of another cert"


def crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
