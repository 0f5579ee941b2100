"""Crash injection: the real command, in its own process, kills itself (SIGKILL) at each
named fault point (``pki.faults``); then the invariants are checked, the same command is
run again, and it must complete. On SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from pki import faults
from pki.model import Status
from tests.conftest import Cli
from tests.helpers import make_csr
from tests.reliability.invariants import (
    KILLED,
    check_complete,
    check_recorded,
    crl_number,
    fleetpki,
    leaves,
    pending,
    temporaries,
)

ISSUE_POINTS = (
    faults.ISSUE_STAGED,
    faults.ISSUE_COMMITTED,
    faults.ISSUE_PLACED_ONE,
    faults.ISSUE_PLACED,
)
# every registered point, and the scenarios that kill at it
MATRIX = {
    **{p: ("single", "force", "batch", "worker") for p in ISSUE_POINTS},
    faults.REVOKE_COMMITTED: ("revoke",),
    faults.CRL_NUMBERED: ("crl",),
    faults.ROTATION_RECORDED: ("server rotation",),
    faults.ROTATION_INSTALLED: ("server rotation",),
}


def test_the_matrix_covers_every_registered_fault_point() -> None:
    assert set(MATRIX) == set(faults.POINTS)


@pytest.fixture
def setup(cli: Cli, home: Path, db_url: str | None) -> Path:
    cli.ok("ca", "init")
    return home


@pytest.mark.parametrize("point", ISSUE_POINTS)
def test_single_issue_killed_then_run_again(setup: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "out"
    argv = ("issue", "device", "gk1", "--generate-key", "--out", str(out))
    assert fleetpki(*argv, fault=point).code == KILLED
    rows = check_recorded(setup, [out])
    assert len(rows) == (0 if point == faults.ISSUE_STAGED else 1)
    again = fleetpki(*argv)
    assert again.code == 0, again.err
    assert "issued device certificate for gk1" in again.err
    check_complete(setup, [out])
    assert list(leaves(setup).values()) == [Status.ACTIVE]  # one certificate, not two


@pytest.mark.parametrize("point", ISSUE_POINTS)
def test_forced_reissue_killed_keeps_a_recorded_pair(
    setup: Path, tmp_path: Path, point: str
) -> None:
    """A --force re-issue killed anywhere: the old files stay until the new ones are
    recorded; the re-run leaves the folder with one recorded key and certificate."""
    out = tmp_path / "out"
    argv = ("issue", "device", "dev1", "--generate-key", "--out", str(out))
    assert fleetpki(*argv).code == 0
    old = (out / "cert.pem").read_bytes()
    earlier = set(leaves(setup))
    assert fleetpki(*argv, "--force", fault=point).code == KILLED
    check_recorded(setup, [out])
    if point in (faults.ISSUE_STAGED, faults.ISSUE_COMMITTED):
        assert (out / "cert.pem").read_bytes() == old  # nothing replaced yet
    again = fleetpki(*argv, "--force")
    assert again.code == 0, again.err
    check_complete(setup, [out], earlier)
    assert len(leaves(setup)) == 2  # the first and one re-issue: the re-run completed it


def _batch(tmp_path: Path, count: int) -> Path:
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(count):
        (batch / f"b{i:03d}.csr").write_bytes(make_csr(f"b{i:03d}")[0])
    return batch


@pytest.mark.parametrize("point", ISSUE_POINTS)
@pytest.mark.parametrize("scenario", ["batch", "worker"])
def test_batch_killed_then_run_again(
    setup: Path, tmp_path: Path, point: str, scenario: str
) -> None:
    """``batch``: one process, killed in its (one) chunk: the whole command dies.
    ``worker``: two forked workers, one killed at its second chunk: the batch fails
    with exit 1 instead of hanging, naming what was issued. The re-run issues the rest
    and counts what was delivered before as done."""
    out = tmp_path / "out"
    count = 240 if scenario == "worker" else 30
    batch = _batch(tmp_path, count)
    workers = "2" if scenario == "worker" else "1"
    argv = ("issue", "device", "--batch", str(batch), "--out", str(out), "--workers", workers)
    killed = fleetpki(*argv, fault=f"{point}@2" if scenario == "worker" else point)
    if scenario == "worker":
        assert killed.code == 1, killed.err
        assert "a batch worker died" in killed.err
    else:
        assert killed.code == KILLED
    check_recorded(setup, [out])
    again = fleetpki(*argv)
    assert again.code == 0, again.err
    check_complete(setup, [out])
    assert len(leaves(setup)) == count  # each CSR issued once
    assert len(list(out.glob("*/cert.pem"))) == count


def test_revoke_killed_before_its_crl_is_finished_by_running_again(
    setup: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert fleetpki("issue", "device", "r1", "--generate-key", "--out", str(out)).code == 0
    serial = next(iter(leaves(setup)))
    crl = setup / "crl" / "issuing.crl.pem"
    before = crl_number(crl)
    argv = ("revoke", f"{serial:x}")
    assert fleetpki(*argv, fault=faults.REVOKE_COMMITTED).code == KILLED
    assert leaves(setup)[serial] is Status.REVOKED
    again = fleetpki(*argv)
    assert again.code == 0, again.err
    from cryptography import x509

    listed = x509.load_pem_x509_crl(crl.read_bytes())
    assert listed.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl_number(crl) > before


def test_crl_killed_after_its_number_was_taken_goes_on_higher(setup: Path) -> None:
    crl = setup / "crl" / "issuing.crl.pem"
    before = crl_number(crl)
    assert fleetpki("crl", fault=faults.CRL_NUMBERED).code == KILLED
    assert crl_number(crl) == before  # the file was not touched
    again = fleetpki("crl")
    assert again.code == 0, again.err
    assert crl_number(crl) >= before + 2  # the number the crash spent is never reused
    assert pending(setup) == 0
    assert temporaries(setup / "crl") == []


def test_a_delivery_again_that_fails_never_revokes_the_certificate(
    setup: Path, tmp_path: Path
) -> None:
    """The same CSR again (a retry) killed after its commit, its staged files then lost:
    the certificate it was delivering again stays active (it is in use where it was
    delivered first); a second retry into another folder works (no stale pending row)."""
    csr = tmp_path / "d1.csr"
    csr.write_bytes(make_csr("d1")[0])
    first = ("issue", "device", "d1", "--csr", str(csr), "--out")
    assert fleetpki(*first, str(tmp_path / "a")).code == 0
    assert fleetpki(*first, str(tmp_path / "b"), fault=faults.ISSUE_COMMITTED).code == KILLED
    assert fleetpki(*first, str(tmp_path / "c")).code == 0  # the pending one replaced
    import shutil

    shutil.rmtree(tmp_path / "b")
    repaired = fleetpki("doctor", "--repair")
    assert repaired.code == 0, repaired.err
    assert list(leaves(setup).values()) == [Status.ACTIVE]
    assert pending(setup) == 0


def test_two_forced_runs_into_one_folder_never_mix_their_files(setup: Path, tmp_path: Path) -> None:
    """Each run places its files under a lock on the folder: whichever comes last, its
    key and its certificate are there together, never one run's key with the other's
    certificate."""
    import subprocess
    import sys

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pki", "issue", "device", "f1", "--generate-key", "--out",
            str(out), "--force"]  # fmt: skip
    for _ in range(3):
        runs = [subprocess.Popen(argv, stderr=subprocess.PIPE) for _ in range(2)]
        for run in runs:
            run.wait(timeout=120)
            assert run.returncode == 0, run.stderr.read() if run.stderr else ""
            if run.stderr:
                run.stderr.close()
        key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        assert key.public_key() == cert.public_key()
    check_complete(setup, [out], leaves(setup))


@pytest.mark.parametrize("point", [faults.ROTATION_RECORDED, faults.ROTATION_INSTALLED])
def test_a_server_rotation_killed_is_finished_by_running_it_again(
    setup: Path, tmp_path: Path, point: str
) -> None:
    """Killed after the new certificate was recorded (not installed) or installed (not
    reloaded): every certificate on disk is recorded; once the answer timeout is over
    (the clock 16 minutes on, under libfaketime), the same command again settles the
    interrupted rotation from what is on disk (finishing it when the new certificate is
    installed: then it says a rotation is in progress, to be told apart in the rotation
    issue), and the next one rotates; the server then holds one active certificate, the
    others revoked or withdrawn."""
    from cryptography import x509

    from tests.processes import faketime_env

    folder = tmp_path / "srv"
    assert fleetpki("rotation", "server", "add", "api.example.test", "--dir", str(folder)).code == 0
    argv = ("rotation", "server", "rotate", "api.example.test", "--grace", "0")
    assert fleetpki(*argv, fault=point).code == KILLED
    check_recorded(setup, [folder])
    later = faketime_env(-16 * 60)
    settling = fleetpki(*argv, env=later)  # settles the interrupted rotation from the disk
    assert settling.code == 0 or "has a rotation in progress" in settling.err, settling.err
    again = fleetpki(*argv, env=later)
    assert again.code == 0, again.err
    current = x509.load_pem_x509_certificate((folder / "current" / "cert.pem").read_bytes())
    statuses = leaves(setup)
    assert statuses[current.serial_number] is Status.ACTIVE
    assert list(statuses.values()).count(Status.ACTIVE) == 1  # the others revoked
    check_recorded(setup, [folder])
