"""A database that stops answering, or drops the COMMIT acknowledgement, or holds its
write lock: every command ends within its deadline with one line, and no certificate is
outside fleetpki without its row."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pki.errors import StorageError
from pki.model import Status
from pki.storage import Inventory
from tests.conftest import Cli
from tests.helpers import make_csr
from tests.reliability.invariants import check_complete, check_recorded, fleetpki, leaves
from tests.reliability.proxy import StallingProxy


@pytest.fixture
def proxied(
    cli: Cli, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[StallingProxy, str]]:
    """A home whose inventory is PostgreSQL reached through the proxy."""
    database = pg_url.rsplit("/", 1)[1]
    proxy = StallingProxy(("127.0.0.1", 5432))
    url = proxy.url(database)
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", url)
    monkeypatch.setenv("FLEETPKI_DB_TIMEOUT", "2")
    try:
        cli.ok("ca", "init")
        yield proxy, url
    finally:
        proxy.close()


def test_a_stalled_database_ends_a_read_at_its_deadline(
    proxied: tuple[StallingProxy, str],
) -> None:
    proxy, url = proxied
    inventory = Inventory.open(url)
    try:
        proxy.stall = True
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"did not answer within 2 s"):
            inventory.find(now=_now())
        assert time.monotonic() - started < 10
    finally:
        proxy.stall = False
        inventory.close()


def test_a_command_on_a_stalled_database_fails_in_one_line(
    proxied: tuple[StallingProxy, str], tmp_path: Path
) -> None:
    """Connecting to a server that accepted the connection and says nothing: the
    command ends at its deadline, exit 1, one line; nothing delivered."""
    proxy, _ = proxied
    proxy.stall = True
    out = tmp_path / "out"
    started = time.monotonic()
    run = fleetpki("issue", "device", "st1", "--generate-key", "--out", str(out), timeout=60)
    assert time.monotonic() - started < 30
    assert run.code == 1
    assert run.err.count("\n") == 1 and "fleetpki: error:" in run.err, run.err
    assert not (out / "cert.pem").exists() and not (out / "key.pem").exists()


def test_a_dropped_commit_acknowledgement_is_finished_by_the_re_run(
    proxied: tuple[StallingProxy, str], home: Path, tmp_path: Path
) -> None:
    """PostgreSQL committed, the answer never came: the command fails saying the outcome
    is unknown; the same command again delivers the certificate it recorded (the same
    one: not signed twice)."""
    proxy, _ = proxied
    csr = tmp_path / "d1.csr"
    csr.write_bytes(make_csr("d1")[0])
    out = tmp_path / "out"
    argv = ("issue", "device", "d1", "--csr", str(csr), "--out", str(out))
    proxy.drop_commit = True
    failed = fleetpki(*argv, timeout=60)
    proxy.drop_commit = False
    assert proxy.commits_dropped >= 1
    assert failed.code == 1 and "did not answer" in failed.err, failed.err
    assert "run the same command again" in failed.err
    check_recorded(home, [out])
    recorded = leaves(home)
    assert list(recorded.values()) == [Status.ACTIVE]  # committed although unanswered
    again = fleetpki(*argv)
    assert again.code == 0, again.err
    check_complete(home, [out])
    delivered = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert set(leaves(home)) == set(recorded) == {delivered.serial_number}


def _hold_sqlite_lock(database: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def _locked(home: Path, seconds: float) -> threading.Thread:
    held = threading.Event()
    thread = threading.Thread(
        target=_hold_sqlite_lock, args=(home / "inventory.db", seconds, held), daemon=True
    )
    thread.start()
    assert held.wait(10)
    return thread


def test_killed_while_waiting_for_the_write_lock_leaves_no_certificate(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    """Defect 1's repro: the write lock held, ``issue --generate-key`` killed while it
    waits: no certificate (and no key) where the operator would pick it up."""
    cli.ok("ca", "init")
    out = tmp_path / "out"
    holder = _locked(home, 6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pki", "issue", "device", "gk1", "--generate-key", "--out", out],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    time.sleep(3)
    proc.kill()
    proc.wait()
    holder.join()
    assert not (out / "cert.pem").exists() and not (out / "key.pem").exists()
    assert leaves(home) == {}
    again = fleetpki("issue", "device", "gk1", "--generate-key", "--out", str(out))
    assert again.code == 0, again.err
    check_complete(home, [out])


def test_a_failed_forced_reissue_keeps_the_active_certificate_and_key(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 2's repro: the re-issue's commit fails (the lock outlasts the deadline):
    exit 1, and the folder still holds the certificate and key the inventory lists."""
    cli.ok("ca", "init")
    out = tmp_path / "out"
    argv = ("issue", "device", "dev1", "--generate-key", "--out", str(out))
    assert fleetpki(*argv).code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setenv("FLEETPKI_DB_TIMEOUT", "1")
    holder = _locked(home, 4)
    failed = fleetpki(*argv, "--force")
    holder.join()
    assert failed.code == 1, failed.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(leaves(home).values()) == [Status.ACTIVE]
    check_complete(home, [out])


def _now() -> object:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def test_a_connection_lost_in_the_middle_of_a_batch_is_one_line(
    proxied: tuple[StallingProxy, str],
    home: Path,
    tmp_path: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL gone while two workers commit: exit 1, one line (not the driver's own
    'error ignored terminating <psycopg.Pipeline ...>' as well), no certificate delivered
    without its row."""
    proxy, _ = proxied
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(1500):
        (batch / f"p{i:04d}.csr").write_bytes(make_csr(f"p{i:04d}")[0])
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "pki", "issue", "device", "--batch", batch, "--out", out,
         "--workers", "2"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(out.glob("*/cert.pem")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.close()  # the connection drops mid-batch
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert err.count("\n") == 1 and err.startswith("fleetpki: error:"), err
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", pg_url)  # the database itself, not the proxy
    check_recorded(home, [out])
