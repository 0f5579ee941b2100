"""``backup`` and ``restore``: a round trip keeps every record, the keys private and the
audit chain whole, and the CRL-number rule holds — a restored home never signs a CRL
number that relying parties already have."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.reliability.invariants import crl_number


@pytest.fixture
def backed_up(cli: Cli, home: Path, tmp_path: Path) -> Path:
    cli.ok("ca", "init")
    for name in ("k1", "k2"):
        cli.ok("issue", "device", name, "--generate-key", "--out", tmp_path / name)
    dest = tmp_path / "backups" / "monday"
    result = cli.ok("backup", dest)
    assert "passphrase is not in the backup" in result.err
    return dest


def test_a_backup_is_private_and_complete(backed_up: Path) -> None:
    assert stat.S_IMODE(backed_up.stat().st_mode) == 0o700
    assert not (backed_up / "ca-passphrase").exists()
    for key in (backed_up / "ca").glob("*.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((backed_up / "inventory.db").stat().st_mode) == 0o600
    manifest = json.loads((backed_up / "fleetpki-backup.json").read_text())
    assert {"inventory.db", "config.json", "ca/issuing.key.pem", "crl/issuing.crl.pem"} <= set(
        manifest["files"]
    )
    assert not list(backed_up.parent.glob(".monday.*"))  # no half-written copy beside it


def test_restore_round_trip_goes_past_the_published_crl(
    cli: Cli, home: Path, backed_up: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = json.loads(cli.ok("list", "--json").out)
    # after the backup, life goes on: a revocation and CRLs relying parties now hold
    cli.ok("revoke", before[0]["serial"])
    cli.ok("crl")
    served = tmp_path / "served.crl.pem"
    served.write_bytes((home / "crl" / "issuing.crl.pem").read_bytes())
    passphrase = (home / "ca-passphrase").read_text().strip()
    # the CA host is lost; a new home from Monday's backup
    new_home = tmp_path / "restored"
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", passphrase)
    restored = cli.ok("--home", new_home, "restore", backed_up, "--published-crl", served)
    assert "next CRL is numbered past" in restored.err
    assert json.loads(cli.ok("--home", new_home, "list", "--json").out) == before
    assert "audit log intact" in cli.ok("--home", new_home, "audit", "--verify").err
    cli.ok("--home", new_home, "crl")
    assert crl_number(new_home / "crl" / "issuing.crl.pem") > crl_number(served)
    assert stat.S_IMODE(new_home.stat().st_mode) == 0o700
    assert stat.S_IMODE((new_home / "ca" / "issuing.key.pem").stat().st_mode) == 0o600


def test_a_damaged_backup_or_a_taken_home_is_refused_and_nothing_is_written(
    cli: Cli, home: Path, backed_up: Path, tmp_path: Path
) -> None:
    config = backed_up / "config.json"
    os.chmod(config, 0o600)
    config.write_text(config.read_text().replace("{", "{ ", 1))
    damaged = cli("--home", tmp_path / "new1", "restore", backed_up)
    assert damaged.code == 2 and "damaged: config.json" in damaged.err
    assert not (tmp_path / "new1").exists()
    taken = cli("--home", home, "restore", backed_up)
    assert taken.code == 2 and "not empty" in taken.err
    again = cli("backup", backed_up)
    assert again.code == 2 and "already exists" in again.err


def test_restore_refuses_links_and_files_a_backup_does_not_hold(
    cli: Cli, backed_up: Path, tmp_path: Path
) -> None:
    import hashlib
    import shutil

    outside = tmp_path / "outside.txt"
    outside.write_text("not the backup's")
    for case, (name, make) in enumerate(
        [
            ("ca/linked.pem", lambda p: p.symlink_to(outside)),
            ("dev/state.json", lambda p: p.write_text("{}")),
        ]
    ):
        copy = tmp_path / f"copy{case}"
        shutil.copytree(backed_up, copy, symlinks=True)
        target = copy / name
        target.parent.mkdir(exist_ok=True)
        make(target)
        manifest_path = copy / "fleetpki-backup.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][name] = hashlib.sha256(target.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
        refused = cli("--home", tmp_path / f"new{case}", "restore", copy)
        assert refused.code == 2 and "is missing, changed, a link" in refused.err, refused.err
        assert not (tmp_path / f"new{case}").exists()
