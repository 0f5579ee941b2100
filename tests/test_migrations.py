"""Schema migrations: an inventory made by the fleetpki of before migrations (the committed
fixture, tests/fixtures/migrations) is upgraded to head on SQLite and PostgreSQL with every
row intact; commands refuse an inventory that is not at head; the heads this code expects
are the migrations' heads."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pki.storage import migrate, open_engine
from tests.conftest import Cli

FIXTURES = Path(__file__).parent / "fixtures" / "migrations"
PASSPHRASE = "migration-fixture-passphrase"
TABLES = (
    "certificates", "audit_events", "crls", "bundle_versions", "pca_requests",
    "fleetpki_meta", "rotations", "server_targets", "leases", "iot_certificates", "iot_ca",
)  # fmt: skip


def _rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as plain values, in a stable order."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            found = {}
            for table in TABLES:
                rows = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings().all()
                found[table] = sorted(
                    (dict(r) for r in rows), key=lambda r: json.dumps(r, default=str)
                )
            return found
    finally:
        engine.dispose()


def _as_utc(value: Any) -> dt.datetime:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _same_rows(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> None:
    for table in TABLES:
        old, new = before[table], after[table]
        if table == "fleetpki_meta":  # the audit chain's head, added by pki_0003
            new = [r for r in new if r["key"] != "audit_head"]
        assert len(old) == len(new), table
        for a, b in zip(old, new, strict=True):
            if table == "rotations":
                assert b.pop("profile") == "device"  # the fixture's one rotation is a device's
                assert (b.pop("attempts"), b.pop("next_attempt_at")) == (1, None)  # rot_0003
            if table == "bundle_versions":  # what a bundle held: unknown before (pki_0005)
                assert b.pop("cas") is None
            if table == "certificates":  # each key's id, from its PEM (pki_0004)
                assert len(b.pop("spki_sha256")) == 64
                # and the id of the CA key that signed it, from its PEM (pki_0006)
                assert len(b.pop("issuer_key_id") or "") == 40
            if table == "audit_events":  # chained by pki_0003, in their order
                assert len(b.pop("hash")) == 64 and "prev_hash" in b
                b.pop("prev_hash")
            if table.startswith("iot_"):
                # ISO text before, the inventory's UTC time after (dev_0002)
                assert _as_utc(a.pop("registered_at")) == _as_utc(b.pop("registered_at"))
            assert a == b, table


@pytest.fixture
def old_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture's home and SQLite inventory, as an operator upgrading fleetpki has them."""
    home = tmp_path / "home"
    shutil.copytree(FIXTURES / "home-v1", home)
    shutil.copy(FIXTURES / "inventory-v1.sqlite", home / "inventory.db")
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", PASSPHRASE)
    return home


def test_an_inventory_from_before_migrations_is_upgraded_with_its_rows(
    cli: Cli, old_home: Path
) -> None:
    url = f"sqlite:///{old_home / 'inventory.db'}"
    before = _rows(url)
    # every command refuses it with one line naming the upgrade; nothing is changed
    refused = cli("--home", old_home, "list")
    assert refused.code == 2 and refused.err.count("\n") == 1
    assert "made before schema migrations" in refused.err and "fleetpki db upgrade" in refused.err
    current = cli("--home", old_home, "db", "current", "--json")
    assert current.code == 1 and json.loads(current.out)["state"] == "legacy"
    assert _rows(url) == before
    upgraded = cli.ok("--home", old_home, "db", "upgrade")
    assert "upgraded" in upgraded.err and "to dev_0002, pki_0006, rot_0003" in upgraded.err
    _same_rows(before, _rows(url))
    assert "intact" in cli.ok("--home", old_home, "audit", "--verify").err
    assert (
        json.loads(cli.ok("--home", old_home, "db", "current", "--json").out)["state"] == "current"
    )
    assert "already at" in cli.ok("--home", old_home, "db", "upgrade").err
    # the fleet's home works on: its certificates, its server target, its rotations
    records = json.loads(cli.ok("--home", old_home, "list", "--json").out)
    assert sorted(r["thing"] or r["common_name"] for r in records) == [
        "fx-1", "fx-2", "fx-3", "fx-web.example", "fx.example",
    ]  # fmt: skip
    targets = json.loads(cli.ok("--home", old_home, "rotation", "server", "list", "--json").out)
    assert [t["name"] for t in targets] == ["fx-web.example"]
    status = json.loads(cli.ok("--home", old_home, "rotation", "status", "--json").out)
    assert status["states"]["failed"] == 1
    fx3 = next(r for r in records if r["thing"] == "fx-3")
    cli.ok("--home", old_home, "revoke", fx3["serial"])


def test_an_inventory_from_before_migrations_on_postgresql(
    cli: Cli, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(FIXTURES / "inventory-v1.postgresql.sql"),
         pg_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    before = _rows(pg_url)
    hierarchy = next(r["value"] for r in before["fleetpki_meta"] if r["key"] == "hierarchy_id")
    # the home that made it is not kept: one with its hierarchy id stands in for it
    home = tmp_path / "home"
    shutil.copytree(FIXTURES / "home-v1", home)
    config = json.loads((home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps(config | {"hierarchy_id": hierarchy}))
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", pg_url)
    assert cli("--home", home, "list").code == 2
    cli.ok("--home", home, "db", "upgrade")
    _same_rows(before, _rows(pg_url))
    assert len(json.loads(cli.ok("--home", home, "list", "--json").out)) == 5
    engine = open_engine(pg_url)
    try:
        assert migrate.state(engine).at_head
    finally:
        engine.dispose()


def test_a_newer_inventory_is_refused_not_downgraded(cli: Cli, home: Path) -> None:
    cli.ok("ca", "init")
    engine = open_engine(f"sqlite:///{home / 'inventory.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('pki_9999')"))
    engine.dispose()
    for argv in (("list",), ("db", "upgrade")):
        result = cli(*argv)
        assert result.code == 2 and "newer than this fleetpki knows; upgrade fleetpki" in result.err


def test_ca_init_makes_the_schema_at_head(cli: Cli, home: Path) -> None:
    cli.ok("ca", "init")
    engine = open_engine(f"sqlite:///{home / 'inventory.db'}")
    try:
        found = migrate.state(engine)
    finally:
        engine.dispose()
    assert found.at_head and found.revisions == {"pki_0006", "rot_0003", "dev_0002"}


def test_the_expected_heads_are_the_migrations_heads() -> None:
    from alembic.script import ScriptDirectory

    from pki.storage.migrate import _config

    known = migrate.branches()
    assert {b.name for b in known} == {"pki", "rotation", "devices"}
    engine = open_engine("sqlite://")
    with engine.connect() as conn:
        script = ScriptDirectory.from_config(_config(conn, known))
        assert set(script.get_heads()) == {b.head for b in known}
        for branch in known:  # each branch's baseline is its base
            assert script.get_revision(branch.baseline).down_revision is None
    engine.dispose()


def test_db_commands_write_nothing_where_there_is_no_inventory(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``db current`` on a home without an inventory makes no file; ``db upgrade`` never
    builds a schema without its CA (``ca init`` does)."""
    for command in ("current", "upgrade"):
        result = cli("db", command)
        assert result.code == 2, result.err
        assert "no inventory at sqlite:///" in result.err and "ca init" in result.err
    assert not (home / "inventory.db").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database, but no fleetpki schema in it
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", f"sqlite:///{empty}")
    result = cli("db", "upgrade")
    assert result.code == 2, result.err
    assert "has no fleetpki schema to upgrade" in result.err
    with sqlite3.connect(empty) as conn:
        assert conn.execute("select name from sqlite_master").fetchall() == []


def test_a_rotation_waiting_for_its_device_is_asked_again_after_the_upgrade(
    cli: Cli, old_home: Path
) -> None:
    """rot_0003 gives rotations a next attempt time: one still waiting for its device
    when fleetpki is upgraded gets it at once (the next sweep asks again), not never."""
    db = old_home / "inventory.db"
    with sqlite3.connect(db) as conn:  # the fixture's rotation, as if still under way
        conn.execute("UPDATE rotations SET state = 'requested'")
    cli.ok("--home", old_home, "db", "upgrade")
    with sqlite3.connect(db) as conn:
        query = "SELECT attempts, next_attempt_at, updated_at FROM rotations"
        rows = conn.execute(query).fetchall()
    assert rows and all(a == 1 and due == updated for a, due, updated in rows), rows
