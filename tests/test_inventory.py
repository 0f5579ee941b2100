"""The inventory on SQLite and on PostgreSQL: the same tests, both databases."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pki.clock import FixedClock
from pki.errors import StorageError
from pki.storage import Inventory
from tests.conftest import Cli
from tests.helpers import NOW, load_cert


@pytest.fixture
def fleet(cli: Cli, home: Path, tmp_path: Path, db_url: str | None) -> dict[str, str]:
    """A CA and four certificates issued at NOW: serial by name."""
    clock = FixedClock(NOW)
    cli.ok("ca", "init", clock=clock)
    serials = {}
    for name, days in (("a", 10), ("b", 40), ("c", 200)):
        out = cli.ok(
            "issue",
            "device",
            f"thing-{name}",
            "--generate-key",
            "--days",
            str(days),
            "--out",
            tmp_path / name,
            "--json",
            clock=clock,
        ).out
        serials[name] = json.loads(out)["serial"]
    out = cli.ok(
        "issue",
        "server",
        "api.example.com",
        "--generate-key",
        "--out",
        tmp_path / "s",
        "--json",
        clock=clock,
    ).out
    serials["server"] = json.loads(out)["serial"]
    return serials


def _list(cli: Cli, *args: str, clock: FixedClock | None = None) -> list[dict[str, object]]:
    return json.loads(cli.ok("list", "--json", *args, clock=clock or FixedClock(NOW)).out)


def test_records_carry_the_contract_fields(cli: Cli, fleet: dict[str, str], tmp_path: Path) -> None:
    record = json.loads(cli.ok("show", fleet["a"], "--json", clock=FixedClock(NOW)).out)
    for key in (
        "serial",
        "thing",
        "profile",
        "status",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "issuer",
    ):
        assert key in record
    cert = load_cert(tmp_path / "a" / "cert.pem")
    from cryptography.hazmat.primitives import hashes

    assert record["fingerprint_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert record["thing"] == "thing-a" and record["profile"] == "device"
    assert record["issuer"] == "CN=fleetpki Issuing CA"
    assert record["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    # colons and upper case are accepted
    colon = ":".join(fleet["a"][i : i + 2] for i in range(0, len(fleet["a"]), 2)).upper()
    assert json.loads(cli.ok("show", colon, "--json").out)["serial"] == fleet["a"]


def test_list_filters(cli: Cli, fleet: dict[str, str]) -> None:
    assert {r["serial"] for r in _list(cli)} == set(fleet.values())
    expiring = _list(cli, "--expiring-within", "30d")
    assert [r["serial"] for r in expiring] == [fleet["a"]]
    assert [r["serial"] for r in _list(cli, "--expiring-within", "60d")] == [fleet["a"], fleet["b"]]
    assert [r["serial"] for r in _list(cli, "--thing", "thing-c")] == [fleet["c"]]
    assert [r["serial"] for r in _list(cli, "--profile", "server")] == [fleet["server"]]
    # 20 days later thing-a has expired
    later = FixedClock(NOW + dt.timedelta(days=20))
    expired = _list(cli, "--status", "expired", clock=later)
    assert [(r["serial"], r["status"]) for r in expired] == [(fleet["a"], "expired")]
    active = {r["serial"] for r in _list(cli, "--status", "active", clock=later)}
    assert active == {fleet["b"], fleet["c"], fleet["server"]}


def test_revoke_is_idempotent_and_first_reason_stands(cli: Cli, fleet: dict[str, str]) -> None:
    first = cli.ok("revoke", fleet["b"], "--reason", "key-compromise", "--json")
    assert json.loads(first.out)["changed"] is True
    second = cli.ok("revoke", fleet["b"], "--reason", "superseded", "--json")
    record = json.loads(second.out)
    assert record["changed"] is False
    assert record["status"] == "revoked" and record["revocation_reason"] == "key-compromise"
    human = cli.ok("revoke", fleet["b"])
    assert "was already revoked" in human.err and "key-compromise" in human.err
    assert [r["serial"] for r in _list(cli, "--status", "revoked")] == [fleet["b"]]
    events = json.loads(cli.ok("audit", "--serial", fleet["b"], "--json").out)
    assert [e["action"] for e in events] == ["issue", "revoke"]  # one revoke event, not three


def test_revoke_refuses_unknown_serial_and_ca(cli: Cli, fleet: dict[str, str], home: Path) -> None:
    unknown = cli("revoke", "0badc0ffee")
    assert unknown.code == 2
    assert unknown.err == (
        "fleetpki: error: no certificate with serial 0badc0ffee in the inventory\n"
    )
    issuing = load_cert(home / "ca" / "issuing.pem")
    ca_serial = format(issuing.serial_number, "x")
    refused = cli("revoke", ca_serial)
    assert refused.code == 2
    assert "is the issuing-ca certificate" in refused.err
    assert _list(cli, "--status", "revoked") == []


def test_audit_log_is_append_only_record(cli: Cli, fleet: dict[str, str]) -> None:
    cli.ok("revoke", fleet["a"])
    events = json.loads(cli.ok("audit", "--json").out)
    actions = [e["action"] for e in events]
    # ca init publishes the root's and the issuing CA's first CRLs
    assert actions == ["ca-init", "crl", "crl", "issue", "issue", "issue", "issue", "revoke", "crl"]
    assert all(e["actor"].startswith("cli:") for e in events)


def test_serial_and_fingerprint_are_unique(
    db_url: str | None, home: Path, cli: Cli, fleet: dict[str, str]
) -> None:
    inventory = Inventory.open(db_url or f"sqlite:///{home / 'inventory.db'}")
    try:
        with (
            pytest.raises(StorageError, match="inventory refused the write"),
            inventory.transaction() as conn,
        ):
            row = conn.execute(sa.text("SELECT * FROM certificates LIMIT 1")).mappings().one()
            values = {k: v for k, v in row.items() if k != "id"}
            conn.execute(
                sa.text(
                    "INSERT INTO certificates ("
                    + ", ".join(values)
                    + ") VALUES ("
                    + ", ".join(f":{k}" for k in values)
                    + ")"
                ),
                values,
            )
    finally:
        inventory.close()


def test_failed_delivery_withdraws_the_certificate_and_leaves_no_file(
    cli: Cli, fleet: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the files are put in place (after the commit: here the chain file
    cannot be renamed) withdraws the recorded certificate (revoked as superseded, the
    event audited) and removes the files of it already in place."""
    import pki.files
    from pki.errors import StorageError as Err

    real = pki.files._place

    def failing(path: Path, tmp_name: str, overwrite: bool) -> None:
        if path.name == "chain.pem":  # key.pem and cert.pem are in place by now
            raise Err(f"cannot write {path}: No space left on device")
        real(path, tmp_name, overwrite)

    monkeypatch.setattr(pki.files, "_place", failing)
    before = _list(cli)
    result = cli("issue", "device", "thing-z", "--generate-key", "--out", tmp_path / "z")
    assert result.code == 1
    assert result.err == (
        "fleetpki: error: 1 certificate(s) recorded but not delivered, withdrawn (revoked as "
        f"superseded): cannot write {tmp_path / 'z' / 'chain.pem'}: No space left on device\n"
    )
    after = _list(cli)
    (new,) = [r for r in after if r not in before]
    assert new["thing"] == "thing-z" and new["status"] == "revoked"
    assert list((tmp_path / "z").iterdir()) == []
    assert "withdraw" in cli.ok("audit", "--serial", new["serial"]).out


def test_failed_commit_removes_delivered_files(
    cli: Cli, fleet: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the inventory cannot commit, the files already written are removed."""
    import pki.issue.issuer

    real = Inventory.transaction

    @contextlib.contextmanager
    def failing_commit(self: Inventory) -> Iterator[object]:
        with real(self) as conn:
            yield conn  # the rows are inserted and the files written here
            raise StorageError("inventory write failed: disk I/O error")  # then COMMIT fails

    with monkeypatch.context() as patch:
        patch.setattr(pki.issue.issuer.Inventory, "transaction", failing_commit)
        result = cli("issue", "device", "thing-y", "--generate-key", "--out", tmp_path / "y")
    assert result.code == 1
    assert "disk I/O error" in result.err
    assert not (tmp_path / "y" / "cert.pem").exists()
    assert not (tmp_path / "y" / "key.pem").exists()
    assert _list(cli, "--thing", "thing-y") == []


def test_unreachable_database_is_a_clear_internal_error(
    cli: Cli, ca_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = cli("list")
    assert result.code == 1
    assert result.err.startswith("fleetpki: error: cannot open the inventory at postgresql")
    assert result.err.count("\n") == 1


def test_atomic_write_many_is_all_or_none(tmp_path: Path) -> None:
    from pki.errors import AlreadyExists, InvalidInput
    from pki.files import atomic_write_many

    (tmp_path / "taken").mkdir()  # a folder where a file should go: refused
    files = [(tmp_path / "a.pem", b"a", 0o644), (tmp_path / "taken", b"b", 0o644)]
    with pytest.raises(InvalidInput, match="is not a regular file"):
        atomic_write_many(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no a.pem, no temporaries
    (tmp_path / "c.pem").write_bytes(b"old")
    files = [(tmp_path / "a.pem", b"a", 0o600), (tmp_path / "c.pem", b"c", 0o644)]
    with pytest.raises(AlreadyExists):
        atomic_write_many(files, overwrite=False)  # c.pem exists: a.pem is not left either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "taken"]
    assert atomic_write_many(files) == [tmp_path / "a.pem", tmp_path / "c.pem"]
    assert (tmp_path / "c.pem").read_bytes() == b"c"
    assert (tmp_path / "a.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pem", "c.pem", "taken"]
