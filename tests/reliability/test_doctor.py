"""``fleetpki doctor`` finds what faults leave behind and repairs what is safe to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pki import faults
from tests.conftest import Cli
from tests.helpers import run_sql
from tests.reliability.invariants import KILLED, check_complete, crl_number, fleetpki, pending


@pytest.fixture
def ca(cli: Cli, home: Path, db_url: str | None) -> str:
    cli.ok("ca", "init")
    return db_url or f"sqlite:///{home / 'inventory.db'}"


def _checks(cli: Cli, *argv: object) -> tuple[int, list[dict[str, object]]]:
    result = cli("doctor", "--json", *argv)
    return result.code, json.loads(result.out)["findings"]


def test_a_healthy_home_has_nothing_to_repair(cli: Cli, ca: str, tmp_path: Path) -> None:
    cli.ok("issue", "device", "h1", "--generate-key", "--out", tmp_path / "h1")
    assert _checks(cli, "--out", tmp_path / "h1") == (0, [])


def test_a_recorded_undelivered_certificate_is_delivered_by_repair(
    cli: Cli, ca: str, home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ("issue", "device", "p1", "--generate-key", "--out", str(out))
    assert fleetpki(*argv, fault=faults.ISSUE_COMMITTED).code == KILLED
    code, findings = _checks(cli)
    assert code == 1 and [f["check"] for f in findings] == ["pending deliveries"]
    assert "never delivered" in str(findings[0]["problem"])
    code, findings = _checks(cli, "--repair")
    assert code == 0 and findings[0]["fix"] == "delivered"
    check_complete(home, [out])


def test_leftover_temporary_files_are_removed_by_repair(
    cli: Cli, ca: str, home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ("issue", "device", "t1", "--generate-key", "--out", str(out))
    assert fleetpki(*argv, fault=faults.ISSUE_STAGED).code == KILLED
    code, findings = _checks(cli, "--out", out)
    assert code == 1 and {f["check"] for f in findings} == {"temporary files"}
    assert _checks(cli, "--out", out, "--repair")[0] == 0
    assert list(out.iterdir()) == [] and pending(home) == 0


def test_a_delivered_certificate_without_a_row_is_recorded_then_revocable(
    cli: Cli, ca: str, tmp_path: Path
) -> None:
    """What a crash of an older fleetpki left (its files renamed before the commit)."""
    out = tmp_path / "out"
    cli.ok("issue", "device", "u1", "--generate-key", "--out", out / "u1")
    serial = json.loads(cli.ok("list", "--json").out)[0]["serial"]
    run_sql(ca, f"DELETE FROM certificates WHERE serial = '{serial}'")
    assert cli("revoke", serial).code == 2  # unknown: nobody could revoke it
    code, findings = _checks(cli, "--out", out)
    assert code == 1 and "is not in the inventory" in str(findings[0]["problem"])
    code, findings = _checks(cli, "--out", out, "--repair")
    assert code == 0 and "recorded" in str(findings[0]["fix"])
    cli.ok("revoke", serial)
    assert "adopt" in cli.ok("audit", "--serial", serial).out


def test_a_restored_inventory_behind_the_published_crl_is_repaired_past_it(
    cli: Cli, ca: str, home: Path, tmp_path: Path
) -> None:
    """Item 3's rule: after a restore, the next CRL number goes past the published one."""
    cli.ok("issue", "device", "r1", "--generate-key", "--out", tmp_path / "r1")
    for _ in range(3):
        cli.ok("crl")
    published = crl_number(home / "crl" / "issuing.crl.pem")
    run_sql(ca, "DELETE FROM crls WHERE number > 1")  # the inventory as an old backup had it
    code, findings = _checks(cli)
    assert code == 1 and any("behind the published" in str(f["problem"]) for f in findings)
    assert _checks(cli, "--repair")[0] == 0
    assert crl_number(home / "crl" / "issuing.crl.pem") > published
    assert _checks(cli) == (0, [])


def test_a_revocation_not_on_the_crl_yet_is_found_and_re_signed(
    cli: Cli, ca: str, home: Path, tmp_path: Path
) -> None:
    cli.ok("issue", "device", "n1", "--generate-key", "--out", tmp_path / "n1")
    serial = json.loads(cli.ok("list", "--json").out)[0]["serial"]
    cli.ok("revoke", serial, "--no-crl")
    code, findings = _checks(cli)
    assert code == 1 and "not on the published CRL" in str(findings[0]["problem"])
    assert _checks(cli, "--repair")[0] == 0
    assert _checks(cli) == (0, [])


def test_active_certificates_no_published_bundle_covers_are_found(
    cli: Cli, ca: str, home: Path, tmp_path: Path
) -> None:
    """From the ledger, offline: the bundle an endpoint was last pointed at must hold a CA
    each active certificate chains to."""
    import datetime as dt

    from cryptography import x509

    from pki.aws.bundles import der_sha256
    from pki.storage import BundleVersion, Inventory

    cli.ok("issue", "device", "t1", "--generate-key", "--out", tmp_path / "t1")
    root = x509.load_pem_x509_certificate((home / "ca" / "root.pem").read_bytes())
    inventory = Inventory.open(ca)

    def published(endpoint: str, cas: tuple[str, ...] | None) -> None:
        version = BundleVersion("apigw", endpoint, "b", "k", "v1", "0" * 64, 1, "publish", True,
                                dt.datetime.now(dt.UTC), "test", cas=cas)  # fmt: skip
        with inventory.engine.begin() as conn:
            inventory.record_bundle_version(conn, version)

    try:
        published("api.example.test", (der_sha256(root),))
        assert _checks(cli) == (0, [])  # the root is in it: covered
        published("api.example.test", ("ab" * 32,))  # then pointed at a bundle without it
        published("old.example.test", None)  # published before the ledger recorded contents
    finally:
        inventory.close()
    code, findings = _checks(cli)
    assert code == 1 and {f["check"] for f in findings} == {"trust stores"}
    problems = sorted(str(f["problem"]) for f in findings)
    assert "1 active device certificate(s) from CN=fleetpki Issuing CA" in problems[0]
    assert "chain to no CA in the apigw bundle of api.example.test (ledger #2)" in problems[0]
    assert "old.example.test (ledger #3) was published before" in problems[1]
