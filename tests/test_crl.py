"""CRLs: signed by the issuing CA, numbered monotonically, built in one pass, lint-clean."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pki.clock import FixedClock
from pki.revocation.crl import check_serials, crl_number, revoked_serials
from tests.conftest import Cli
from tests.helpers import NOW, load_cert


@pytest.fixture
def issued(cli: Cli, home: Path, tmp_path: Path, db_url: str | None) -> list[str]:
    clock = FixedClock(NOW)
    cli.ok("ca", "init", clock=clock)
    serials = []
    for i, days in enumerate((10, 90, 90)):
        out = cli.ok(
            "issue",
            "device",
            f"d{i}",
            "--generate-key",
            "--days",
            str(days),
            "--out",
            tmp_path / f"d{i}",
            "--json",
            clock=clock,
        ).out
        serials.append(json.loads(out)["serial"])
    return serials


def _crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if data.startswith(b"-----"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def test_crl_contents_numbers_and_signature(
    cli: Cli, home: Path, tmp_path: Path, issued: list[str]
) -> None:
    clock = FixedClock(NOW + dt.timedelta(hours=1))
    cli.ok("revoke", issued[1], "--reason", "key-compromise", "--no-crl", clock=clock)
    cli.ok("revoke", issued[2], "--reason", "superseded", "--no-crl", clock=clock)
    out = tmp_path / "a.crl"
    summary = json.loads(cli.ok("crl", "--out", out, "--json", clock=clock).out)
    crl = _crl(out)
    issuing = load_cert(home / "ca" / "issuing.pem")
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert crl.issuer == issuing.subject
    assert crl_number(crl) == summary["number"] == 2  # ca init published #1
    # thisUpdate is backdated 5 minutes, like notBefore; nextUpdate is 7 days from now
    assert crl.last_update_utc == clock.now() - dt.timedelta(minutes=5)
    assert crl.next_update_utc == clock.now() + dt.timedelta(days=7)
    reasons = {
        format(e.serial_number, "x"): e.extensions.get_extension_for_class(
            x509.CRLReason
        ).value.reason
        for e in crl
    }
    assert reasons == {
        issued[1].lstrip("0"): x509.ReasonFlags.key_compromise,
        issued[2].lstrip("0"): x509.ReasonFlags.superseded,
    }
    # openssl agrees on the signature
    verify = subprocess.run(
        ["openssl", "crl", "-in", str(out), "-noout", "-CAfile", str(home / "ca" / "issuing.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "verify OK" in verify.stderr
    # pkilint's PKIX CRL linter has no error
    lint = subprocess.run(
        [
            str(Path(sys.executable).parent / "lint_crl"),
            "lint",
            "-t",
            "CRL",
            "-p",
            "PKIX",
            "-s",
            "ERROR",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert lint.stdout.strip() == "", lint.stdout
    # numbers only go up, and the home copy follows
    second = json.loads(
        cli.ok(
            "crl",
            "--format",
            "der",
            "--out",
            tmp_path / "b.der",
            "--next-update",
            "2d",
            "--json",
            clock=clock,
        ).out
    )
    assert second["number"] == 3
    der = _crl(tmp_path / "b.der")
    assert crl_number(der) == 3
    assert der.next_update_utc - der.last_update_utc == dt.timedelta(days=2, minutes=5)
    assert crl_number(_crl(home / "crl" / "issuing.crl.pem")) == 3


def test_revoke_re_signs_the_home_crl(cli: Cli, home: Path, issued: list[str]) -> None:
    result = cli.ok("revoke", issued[0])
    assert "CRL #2 with 1 entry written to" in result.err
    crl = _crl(home / "crl" / "issuing.crl.pem")
    assert [format(e.serial_number, "x") for e in crl] == [issued[0].lstrip("0")]
    # an idempotent second revoke does not burn a CRL number
    cli.ok("revoke", issued[0])
    assert crl_number(_crl(home / "crl" / "issuing.crl.pem")) == 2


def test_expired_revoked_certificates_leave_the_crl(
    cli: Cli, home: Path, tmp_path: Path, issued: list[str]
) -> None:
    cli.ok("revoke", issued[0], "--no-crl", clock=FixedClock(NOW))
    cli.ok("revoke", issued[1], "--no-crl", clock=FixedClock(NOW))
    later = FixedClock(NOW + dt.timedelta(days=11))  # issued[0] (10 days) has expired
    cli.ok("crl", "--out", tmp_path / "c.pem", clock=later)
    serials = [format(e.serial_number, "x") for e in _crl(tmp_path / "c.pem")]
    assert serials == [issued[1].lstrip("0")]


def test_crl_is_built_in_one_pass(
    cli: Cli, issued: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("add_revoked_certificate called: CRL built entry by entry")

    monkeypatch.setattr(x509.CertificateRevocationListBuilder, "add_revoked_certificate", forbidden)
    for serial in issued:
        cli.ok("revoke", serial, "--no-crl")
    cli.ok("crl", "--out", tmp_path / "x.pem")
    assert len(list(_crl(tmp_path / "x.pem"))) == 3


def test_bad_crl_options(cli: Cli, issued: list[str], tmp_path: Path) -> None:
    bad = cli("crl", "--next-update", "soon", "--out", tmp_path / "z")
    assert bad.code == 2
    assert bad.err == (
        "fleetpki: error: 'soon' is not a duration: use a whole number with a unit: "
        "s, m, h, d, w or y (365 days), e.g. 30d or 12h\n"
    )
    short = cli("crl", "--next-update", "10m", "--out", tmp_path / "z")
    assert (short.code, short.err) == (
        2,
        "fleetpki: error: --next-update must be between 1h and 365d\n",
    )
    assert not (tmp_path / "z").exists()


def test_serial_index_matches_linear_lookup(cli: Cli, issued: list[str], home: Path) -> None:
    for serial in issued[:2]:
        cli.ok("revoke", serial)
    crl = _crl(home / "crl" / "issuing.crl.pem")
    index = revoked_serials(crl)
    candidates = [int(s, 16) for s in issued] + [12345]
    expected = [s for s in candidates if crl.get_revoked_certificate_by_serial_number(s)]
    assert check_serials(candidates, index) == expected == [int(s, 16) for s in issued[:2]]


def test_root_crl_with_an_offline_root_key_and_its_own_passphrase(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root signs its own CRL; its key may leave the home (a passphrase of its own),
    then only 'crl --root --root-key FILE' needs it, and every command warns ahead of the
    root CRL's nextUpdate instead of failing."""
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "issuing passphrase 1")
    monkeypatch.setenv("FLEETPKI_ROOT_PASSPHRASE", "root passphrase 22")
    clock = FixedClock(NOW)
    cli.ok("ca", "init", clock=clock)
    root = _crl(home / "crl" / "root.crl.pem")
    root_cert = load_cert(home / "ca" / "root.pem")
    assert root.issuer == root_cert.subject and crl_number(root) == 1
    assert root.is_signature_valid(root_cert.public_key())  # type: ignore[arg-type]
    assert root.next_update_utc == NOW + dt.timedelta(days=180)
    combined = (home / "crl" / "combined.crl.pem").read_bytes()
    assert (
        combined
        == (home / "crl" / "issuing.crl.pem").read_bytes()
        + (home / "crl" / "root.crl.pem").read_bytes()
    )
    offline = tmp_path / "usb" / "root.key.pem"
    offline.parent.mkdir()
    (home / "ca" / "root.key.pem").rename(offline)
    monkeypatch.delenv("FLEETPKI_ROOT_PASSPHRASE")
    # day to day, nothing needs the root key
    serial = json.loads(
        cli.ok(
            "issue",
            "device",
            "d-1",
            "--generate-key",
            "--out",
            tmp_path / "d",
            "--json",
            clock=clock,
        ).out
    )["serial"]
    assert "warning" not in cli.ok("revoke", serial, clock=clock).err
    # 130 days on, the root CRL is due (two thirds of 180 days): a warning, not a failure
    later = FixedClock(NOW + dt.timedelta(days=130))
    result = cli.ok("crl", "--out", tmp_path / "i.crl", clock=later)
    assert "fleetpki: warning: the root CA's CRL #1 reaches its nextUpdate in 50 days" in result.err
    assert "re-sign it with 'fleetpki crl --root'" in result.err
    shown = json.loads(cli.ok("ca", "show", "--json", clock=later).out)
    assert [c["state"] for c in shown["crls"]] == ["fresh", "due"] and shown["warnings"]
    refused = cli("crl", "--root", clock=later)
    assert refused.code == 2 and "give its file with --root-key FILE" in refused.err
    wrong = cli("crl", "--root", "--root-key", offline, clock=later)
    assert wrong.code == 2 and "wrong passphrase (check FLEETPKI_ROOT_PASSPHRASE)" in wrong.err
    monkeypatch.setenv("FLEETPKI_ROOT_PASSPHRASE", "root passphrase 22")
    signed = json.loads(cli.ok("crl", "--root", "--root-key", offline, "--json", clock=later).out)
    assert (signed["ca"], signed["number"]) == ("root", 2)
    assert crl_number(_crl(home / "crl" / "root.crl.pem")) == 2
    assert json.loads(cli.ok("ca", "show", "--json", clock=later).out)["warnings"] == []


def test_a_published_crl_ahead_of_the_inventory_moves_the_number_past_it(
    cli: Cli, home: Path, tmp_path: Path, issued: list[str]
) -> None:
    """An inventory restored from a backup is behind the CRL relying parties have: the
    next CRL's number goes past the published one, never a second, different #N."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.backends.local import LocalCA
    from pki.home import Home
    from pki.revocation.crl import build_crl

    ca = LocalCA(home / "ca", Home(home).passphrase)
    ahead = build_crl(
        ca.issuing_certificate, ca._issuing_key, [], 41, NOW, NOW + dt.timedelta(days=7),
        __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256(),
    )  # fmt: skip
    (home / "crl" / "issuing.crl.pem").write_bytes(ahead.public_bytes(Encoding.PEM))
    result = cli.ok("crl", "--out", tmp_path / "next.crl")
    assert "the published issuing CRL had number #41, ahead of the inventory" in result.err
    assert crl_number(_crl(home / "crl" / "issuing.crl.pem")) == 42
    audit = json.loads(cli.ok("audit", "--json").out)
    assert audit[-1]["detail"]["resynced_from_published"] == 41


def test_an_unusable_root_key_is_a_warning_not_a_failed_revocation(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    cli.ok("ca", "init", clock=FixedClock(NOW))
    (home / "ca" / "root.key.pem").write_text("not a key\n")
    later = FixedClock(NOW + dt.timedelta(days=130))  # the root's CRL is due
    serial = json.loads(
        cli.ok("issue", "device", "d-1", "--generate-key", "--out", tmp_path / "d", "--json",
               clock=later).out
    )["serial"]  # fmt: skip
    result = cli.ok("revoke", serial, clock=later)
    assert "fleetpki: warning: the root CA's CRL #1 reaches its nextUpdate" in result.err
    assert "corrupt" in result.err
    assert json.loads(cli.ok("show", serial, "--json", clock=later).out)["status"] == "revoked"
