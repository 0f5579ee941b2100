"""The audit log is tamper-evident: every event chained to the one before by its hash;
``audit --verify`` finds an edited, a deleted and a truncated log; ``audit --export``
prints JSON lines with the hashes. Concurrent writers (forked batch workers) never fork
the chain."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.helpers import make_csr, run_sql


@pytest.fixture
def logged(cli: Cli, home: Path, tmp_path: Path, db_url: str | None) -> str:
    """A home with a few hundred events, written by two forked batch workers at once."""
    cli.ok("ca", "init")
    batch = tmp_path / "csrs"
    batch.mkdir()
    for i in range(220):
        (batch / f"c{i:03d}.csr").write_bytes(make_csr(f"c{i:03d}")[0])
    cli.ok("issue", "device", "--batch", batch, "--out", tmp_path / "out", "--workers", "2")
    cli.ok("revoke", _serial(cli))
    return db_url or f"sqlite:///{home / 'inventory.db'}"


def _serial(cli: Cli) -> str:
    return str(json.loads(cli.ok("list", "--json").out)[0]["serial"])


def test_an_untouched_log_verifies_and_exports(cli: Cli, logged: str) -> None:
    verified = cli.ok("audit", "--verify")
    assert "audit log intact" in verified.err
    lines = cli.ok("audit", "--export").out.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) > 220
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    for before, after in itertools.pairwise(events):
        assert after["prev_hash"] == before["hash"]  # one chain, never forked
    assert events[-1]["hash"] in verified.err


@pytest.mark.parametrize(
    ("tamper", "finding"),
    [
        ("UPDATE audit_events SET actor = 'mallory' WHERE id = 5", "event 5 (issue"),
        ("DELETE FROM audit_events WHERE id = 7", "event 8 ("),
        ("DELETE FROM audit_events WHERE id = (SELECT MAX(id) FROM audit_events)", "newest"),
        (
            'UPDATE audit_events SET detail = \'{"reason": "unspecified"}\' '
            "WHERE action = 'revoke'",
            "(revoke",
        ),
    ],
)
def test_verify_finds_an_edited_deleted_or_truncated_log(
    cli: Cli, logged: str, tamper: str, finding: str
) -> None:
    run_sql(logged, tamper)
    result = cli("audit", "--verify")
    assert result.code == 1
    assert finding in result.err and "NOT intact" in result.err


def test_a_failed_ca_init_takes_its_events_back_and_the_chain_stays_whole(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pki.ca.setup
    from pki.errors import StorageError

    def fail(*_: object, **__: object) -> None:
        raise StorageError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(pki.ca.setup, "sign_and_publish", fail)
        assert cli("ca", "init").code == 1
    cli.ok("ca", "init")
    assert "audit log intact" in cli.ok("audit", "--verify").err


def test_verify_while_others_write_is_not_a_false_alarm(cli: Cli, ca_home: Path) -> None:
    """Events appended while --verify reads come after the head it read first."""
    import datetime as dt

    from pki.storage import AuditEvent, Inventory

    inventory = Inventory.open(f"sqlite:///{ca_home / 'inventory.db'}")
    real = inventory._raw_rows

    def rows_while_writing(batch: int = 5000) -> object:
        for n, row in enumerate(real(batch)):
            if n == 1:  # another process appends meanwhile
                with inventory.transaction() as conn:
                    now = dt.datetime.now(dt.UTC)
                    inventory.audit(conn, [AuditEvent(now, "t", "crl", None, {})])
            yield row

    inventory._raw_rows = rows_while_writing  # type: ignore[method-assign]
    try:
        assert inventory.verify_audit().intact
    finally:
        inventory.close()
