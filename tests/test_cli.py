"""CA set-up, secrets at rest, and the CLI's exit-code contract."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import click
import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import Cli


def test_ca_init_encrypts_keys_and_generates_a_private_passphrase(cli: Cli, home: Path) -> None:
    result = cli.ok("ca", "init", "--common-name", "Acme Fleet")
    assert f"generated a CA key passphrase into {home / 'ca-passphrase'} (mode 0600)" in result.err
    passphrase = (home / "ca-passphrase").read_bytes().strip()
    assert passphrase not in (result.out + result.err).encode()
    for name in ("ca-passphrase", "ca/root.key.pem", "ca/issuing.key.pem", "config.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for key_file in ("root.key.pem", "issuing.key.pem"):
        data = (home / "ca" / key_file).read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, None)
        serialization.load_pem_private_key(data, passphrase)
    shown = json.loads(cli.ok("ca", "show", "--json").out)
    names = sorted(c["common_name"] for c in shown["certificates"])
    assert names == ["Acme Fleet Issuing CA", "Acme Fleet Root CA"]


def test_no_private_key_material_in_inventory_or_output(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    cli.ok("ca", "init")
    result = cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d", "--json")
    key_body = (tmp_path / "d" / "key.pem").read_text().splitlines()[1]
    db = (home / "inventory.db").read_bytes()
    for wal in home.glob("inventory.db-*"):
        db += wal.read_bytes()
    assert b"PRIVATE KEY" not in db
    assert key_body.encode() not in db
    assert key_body not in result.out + result.err
    passphrase = (home / "ca-passphrase").read_bytes().strip()
    assert passphrase not in db


def test_ca_init_refuses_to_overwrite(cli: Cli, home: Path) -> None:
    cli.ok("ca", "init")
    before = (home / "ca" / "issuing.pem").read_bytes()
    result = cli("ca", "init", "--key-type", "rsa-2048")
    assert result.code == 2
    assert result.err == (
        f"fleetpki: error: a CA already exists in {home}; refusing to overwrite it "
        "(use another --home for a new CA)\n"
    )
    assert (home / "ca" / "issuing.pem").read_bytes() == before


def test_passphrase_from_environment_is_not_stored(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "correct horse battery staple")
    result = cli.ok("ca", "init")
    assert "generated" not in result.err
    assert not (home / "ca-passphrase").exists()
    cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d1")
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "wrong horse")
    wrong = cli("issue", "device", "d2", "--generate-key", "--out", tmp_path / "d2")
    assert wrong.code == 2
    assert wrong.err == (
        "fleetpki: error: cannot decrypt the CA key issuing.key.pem: wrong passphrase "
        "(check FLEETPKI_CA_PASSPHRASE)\n"
    )
    assert "wrong horse" not in wrong.err
    assert not (tmp_path / "d2").exists()
    monkeypatch.delenv("FLEETPKI_CA_PASSPHRASE")
    missing = cli("issue", "device", "d3", "--generate-key", "--out", tmp_path / "d3")
    assert missing.code == 2
    assert "the CA key passphrase is not available: set FLEETPKI_CA_PASSPHRASE" in missing.err


def test_short_passphrase_is_refused(cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "short")
    result = cli("ca", "init")
    assert result.code == 2
    assert result.err == (
        "fleetpki: error: FLEETPKI_CA_PASSPHRASE is too short: use at least 12 characters\n"
    )
    assert not (home / "ca").exists()


def test_ca_init_takes_one_passphrase_only(
    cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir(mode=0o700)
    (home / "ca-passphrase").write_text("a leftover passphrase\n")
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "another long passphrase")
    result = cli("ca", "init")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"fleetpki: error: {home / 'ca-passphrase'} holds another passphrase than "
        "FLEETPKI_CA_PASSPHRASE; remove the file or unset the variable, so the CA keys have "
        "only one\n"
    )
    assert sorted(p.name for p in home.iterdir()) == ["ca-passphrase"]
    (home / "ca-passphrase").write_text("short\n")  # a file too short is refused like the variable
    monkeypatch.delenv("FLEETPKI_CA_PASSPHRASE")
    result = cli("ca", "init")
    assert result.code == 2
    assert "ca-passphrase is too short: use at least 12 characters" in result.err
    assert sorted(p.name for p in home.iterdir()) == ["ca-passphrase"]
    # the same passphrase in both places is fine, and so is one the locale cannot decode
    odd = "p\udcffssphrase-\udce9-long"  # bytes 0xff and 0xe9, not UTF-8
    (home / "ca-passphrase").write_bytes(os.fsencode(odd) + b"\n")
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", odd)
    cli.ok("ca", "init")
    monkeypatch.delenv("FLEETPKI_CA_PASSPHRASE")
    cli.ok("crl")  # the file alone opens the CA key
    assert (home / "inventory.db").stat().st_mode & 0o777 == 0o600


def test_commands_without_a_ca(cli: Cli, home: Path) -> None:
    result = cli("list")
    assert result.code == 2
    assert result.err == (
        f"fleetpki: error: no CA in {home}; run 'fleetpki ca init' first "
        "(or set --home / FLEETPKI_HOME)\n"
    )
    assert not home.exists(), "a read command must not create the home"


def test_usage_errors_exit_2_with_one_line(cli: Cli, ca_home: Path) -> None:
    unknown = cli("frobnicate")
    assert unknown.code == 2 and unknown.err.count("\n") == 1
    assert "No such command 'frobnicate'" in unknown.err
    bad_choice = cli("revoke", "01", "--reason", "because")
    assert bad_choice.code == 2 and bad_choice.err.count("\n") == 1
    bad_duration = cli("list", "--expiring-within", "soonish")
    assert bad_duration.code == 2
    assert bad_duration.err.startswith("fleetpki: error: 'soonish' is not a duration")


def test_help_lists_commands(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("ca", "issue", "list", "show", "revoke", "crl", "audit"):
        assert f"  {command} " in result.out


def test_plugin_command_groups_are_loaded(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other packages add commands through the fleetpki.commands entry-point group."""
    import pki.plugins

    @click.command("hello")
    def hello() -> None:
        click.echo("hello from a plugin")

    class FakeEntryPoint:
        name = "hello"

        def load(self) -> click.Command:
            return hello

    real = pki.plugins.entry_points

    def fake(group: str) -> object:
        return [FakeEntryPoint()] if group == "fleetpki.commands" else real(group)

    monkeypatch.setattr(pki.plugins, "entry_points", fake)
    assert cli.ok("hello").out == "hello from a plugin\n"
    assert "  hello" in cli.ok("--help").out


def test_show_pem_and_unknown(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    serial = json.loads(
        cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    assert cli.ok("show", serial, "--pem").out == (tmp_path / "d" / "cert.pem").read_text()
    missing = cli("show", "abcdef")
    assert (missing.code, missing.err) == (
        2,
        "fleetpki: error: no certificate with serial abcdef in the inventory\n",
    )


def test_revocation_hooks_get_the_event_and_failures_are_reported(
    cli: Cli, ca_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pki.hooks
    from pki.errors import BackendError

    seen = []

    def recorder(event: pki.hooks.RevocationEvent) -> None:
        seen.append(event)

    def broken(event: pki.hooks.RevocationEvent) -> None:
        raise BackendError("set the certificate to REVOKED", "iot", "endpoint unreachable")

    monkeypatch.setattr(
        pki.hooks, "revocation_hooks", lambda: [("recorder", recorder), ("iot", broken)]
    )
    serial = json.loads(
        cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    result = cli("revoke", serial, "--reason", "key-compromise")
    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        f"fleetpki: error: hook backend failed to finish the revocation: {serial} is revoked in "
        "the inventory, but iot: iot backend failed to set the certificate to REVOKED: "
        "endpoint unreachable"
    )
    assert len(seen) == 1 and seen[0].record.serial_hex == serial
    assert seen[0].reason.value == "key-compromise"
    assert seen[0].crl_path == ca_home / "crl" / "issuing.crl.pem"
    # the revocation stands; revoking again changes nothing in the inventory but runs the
    # (idempotent) hooks again, so a fixed hook finishes the interrupted revocation
    assert json.loads(cli.ok("show", serial, "--json").out)["status"] == "revoked"
    monkeypatch.setattr(pki.hooks, "revocation_hooks", lambda: [("recorder", recorder)])
    again = cli.ok("revoke", serial, "--reason", "superseded")
    assert "the inventory is unchanged" in again.err
    assert len(seen) == 2 and seen[1].reason.value == "key-compromise"


def test_broken_plugin_does_not_break_the_cli(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import pki.plugins

    class Broken:
        name = "broken"
        value = "nowhere.module:group"

        def load(self) -> object:
            raise ImportError("No module named 'nowhere'")

    real = pki.plugins.entry_points
    monkeypatch.setattr(
        pki.plugins,
        "entry_points",
        lambda group: [Broken()] if group == "fleetpki.commands" else real(group),
    )
    assert re.search(r"\n  broken +\(unavailable: command group", cli.ok("--help").out)
    result = cli("broken")
    assert result.code == 1
    assert "command group 'broken' (nowhere.module:group) failed to load: ImportError" in result.err


def test_revoke_with_a_wrong_passphrase_changes_nothing(
    cli: Cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "correct horse battery staple")
    cli.ok("ca", "init")
    serial = json.loads(
        cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "wrong horse")
    for extra in ((), ("--no-crl",)):  # no CRL to sign: the passphrase is checked anyway
        result = cli("revoke", serial, "--reason", "key-compromise", *extra)
        assert result.code == 2 and "wrong passphrase" in result.err
        assert json.loads(cli.ok("show", serial, "--json").out)["status"] == "active"
    # with the right passphrase the revocation and its CRL go through
    monkeypatch.setenv("FLEETPKI_CA_PASSPHRASE", "correct horse battery staple")
    cli.ok("revoke", serial, "--reason", "key-compromise")
    assert json.loads(cli.ok("show", serial, "--json").out)["status"] == "revoked"
    assert (home / "crl" / "issuing.crl.pem").exists()


def test_revoke_again_resigns_a_crl_that_misses_the_certificate(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    serial = json.loads(
        cli.ok("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    cli.ok("revoke", serial, "--no-crl")  # e.g. interrupted before the CRL was signed
    assert "CRL #1 with 1 entry" not in cli.ok("revoke", serial, "--no-crl").err
    again = cli.ok("revoke", serial)
    assert "CRL #2 with 1 entry written to" in again.err
    from cryptography import x509

    crl = x509.load_pem_x509_crl((ca_home / "crl" / "issuing.crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


def test_issuing_key_that_does_not_match_its_certificate(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    ca = ca_home / "ca"
    (ca / "issuing.key.pem").write_bytes((ca / "root.key.pem").read_bytes())
    result = cli("issue", "device", "d1", "--generate-key", "--out", tmp_path / "d")
    assert result.code == 1
    assert result.err == (
        f"fleetpki: error: {ca / 'issuing.key.pem'} does not belong to {ca / 'issuing.pem'}; "
        "the CA home is inconsistent\n"
    )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"policy": {"allow_wildcard": "false"}},
            "policy.allow_wildcard must be bool, not 'false'",
        ),
        ({"crl_next_update_days": "7"}, "crl_next_update_days must be int, not '7'"),
        ({"polcy": {}}, "unknown setting 'polcy'"),
    ],
)
def test_config_values_are_type_checked(
    cli: Cli, ca_home: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = ca_home / "config.json"
    config = json.loads(path.read_text())
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    result = cli("issue", "server", "api.example.com", "--dns", "*.api.example.com",
                 "--generate-key", "--out", tmp_path / "s")  # fmt: skip
    assert result.code == 2
    assert result.err == f"fleetpki: error: {path} is not a valid fleetpki config: {message}\n"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--common-name", ""), "--common-name must be 1-50 characters"),
        (("--issuing-days", "9999"), "the issuing CA must expire before the root"),
    ],
)
def test_bad_ca_init_options_write_nothing(
    cli: Cli, home: Path, args: tuple[str, ...], message: str
) -> None:
    result = cli("ca", "init", *args)
    assert result.code == 2 and message in result.err
    assert not home.exists()


@pytest.mark.usefixtures("ca_home")
def test_out_never_replaces_a_device_a_pipe_or_a_folder(cli: Cli, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    audit = cli.ok("audit", "--json").out
    for out in (fifo,):  # (a folder: click itself refuses it)
        result = cli("crl", "--out", out)
        assert (result.code, result.err) == (
            2,
            f"fleetpki: error: {out} is not a regular file; refusing to replace it "
            "(give a file path)\n",
        )
    assert cli.ok("audit", "--json").out == audit  # refused before a CRL number was spent
    assert fifo.exists()
    # a symlink is replaced itself, never written through: its target stays as it was
    target = tmp_path / "target.pem"
    target.write_text("keep me")
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    cli.ok("crl", "--out", link)
    assert not link.is_symlink() and b"BEGIN X509 CRL" in link.read_bytes()
    assert target.read_text() == "keep me"
    # a key.pem that is a symlink, even a dangling one, is taken without --force only
    folder = tmp_path / "dev"
    folder.mkdir()
    (folder / "key.pem").symlink_to(tmp_path / "nowhere")
    before = cli.ok("list", "--json").out
    result = cli("issue", "device", "d-1", "--generate-key", "--out", folder)
    assert result.code == 2 and "key.pem already exists; use --force" in result.err
    assert cli.ok("list", "--json").out == before
    cli.ok("issue", "device", "d-1", "--generate-key", "--out", folder, "--force")
    assert not (folder / "key.pem").is_symlink()
    assert not (tmp_path / "nowhere").exists()
    # an --out under a file is an operator's mistake, refused before signing (exit 2)
    before = cli.ok("list", "--json").out
    result = cli("issue", "device", "d-2", "--generate-key", "--out", target / "sub")
    assert result.code == 2
    assert f"cannot use --out {target / 'sub'}: " in result.err
    assert cli.ok("list", "--json").out == before


@pytest.mark.usefixtures("ca_home")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--expiring-within", "3000000d"], "'3000000d' is too long; durations go up to"),
        (["crl", "--next-update", "99999999999999d"], "is too long; durations go up to"),
        (["rotation", "plan", "--horizon", "3000000d"], "is too long; durations go up to"),
        (["list", "--expiring-within", ""], "'' is not a duration"),
        (["crl", "--next-update", ""], "'' is not a duration"),
        (["audit", "--serial", ""], "'' is not a hexadecimal certificate serial number"),
        (["list", "--limit", "99999999999999999999999"], "is not in the range 1<=x<=1000000000"),
        (["fleet", "simulate", "--devices", "2", "--duration", "nan"], "'nan' is not a finite"),
        (["fleet", "simulate", "--devices", "2", "--rate", "nan"], "'nan' is not a finite"),
    ],
)
def test_out_of_range_and_empty_values_are_operator_errors(
    cli: Cli, argv: list[str], message: str
) -> None:
    result = cli(*argv)
    assert (result.code, result.out) == (2, ""), result.err
    assert result.err.startswith("fleetpki: error: ") and result.err.count("\n") == 1
    assert message in result.err


@pytest.mark.parametrize(
    ("root", "issuing", "message"),
    [
        ("99999999", "365", "--root-days must be 1-10980 (30 years at most)"),
        ("3650", "0", "--issuing-days must be at least 1"),
        ("365", "3650", "the issuing CA must expire before the root (issuing days < root)"),
    ],
)
def test_ca_lifetimes_out_of_range(
    cli: Cli, home: Path, root: str, issuing: str, message: str
) -> None:
    result = cli("ca", "init", "--root-days", root, "--issuing-days", issuing)
    assert (result.code, result.err) == (2, f"fleetpki: error: {message}\n")
    assert not (home / "ca").exists()


@pytest.mark.usefixtures("ca_home")
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe", "'utf-8' codec can't decode"),
        (b'{"crl_next_update_days": 1000000000000}', "crl_next_update_days must be 1-365"),
        (b'{"issue_rate": NaN}', "issue_rate must be a positive number of requests per second"),
        (b'{"get_rate": -1}', "get_rate must be a positive number of requests per second"),
    ],
)
def test_a_config_that_makes_no_sense_is_refused_by_name(
    cli: Cli, home: Path, content: bytes, problem: str
) -> None:
    (home / "config.json").write_bytes(content)
    result = cli("crl")
    assert result.code == 2
    assert result.err.startswith(f"fleetpki: error: {home / 'config.json'} is not a valid ")
    assert problem in result.err


@pytest.mark.parametrize("prefix", ["", "not a uri/", "https://x.example/\n"])
def test_a_bad_thing_uri_prefix_stops_device_issuance_but_not_revocation(
    cli: Cli, home: Path, tmp_path: Path, prefix: str
) -> None:
    cli.ok("ca", "init")
    serial = json.loads(
        cli.ok("issue", "device", "d-1", "--generate-key", "--out", tmp_path / "a", "--json").out
    )["serial"]
    config = json.loads((home / "config.json").read_text())
    config["policy"] = {"thing_uri_prefix": prefix}
    (home / "config.json").write_text(json.dumps(config))
    result = cli("issue", "device", "d-2", "--generate-key", "--out", tmp_path / "b")
    assert result.code == 2
    assert result.err.startswith(
        f"fleetpki: error: config.json policy.thing_uri_prefix {prefix!r} is not an absolute URI"
    )
    assert not (tmp_path / "b").exists()
    cli.ok("revoke", serial, "--reason", "key-compromise")  # revocation never waits on it
    cli.ok("issue", "server", "api.example.test", "--generate-key", "--out", tmp_path / "s")


def test_durations_are_bounded_in_digits_too() -> None:
    from pki.errors import InvalidInput
    from pki.model import parse_duration

    assert parse_duration("36500d").days == 36500
    for text in ("36501d", "9" * 5000):  # 5,000 digits: past Python's int() limit
        with pytest.raises(InvalidInput):
            parse_duration(text)


def test_aws_pca_create_checks_the_lifetimes_before_anything_is_created(cli: Cli) -> None:
    result = cli("ca", "init", "--backend", "aws-pca", "--create", "--root-days", "99999999")
    assert (result.code, result.err) == (
        2,
        "fleetpki: error: --root-days must be 1-10980 (30 years at most)\n",
    )


def test_the_region_of_a_private_ca_comes_from_its_arn() -> None:
    from pki.backends.aws_pca import region_of_arn

    arn = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/abc"
    assert region_of_arn(arn) == "eu-west-1"
    assert region_of_arn("arn:aws:acm-pca:::certificate-authority/creating") is None
    assert region_of_arn("not-an-arn") is None


@pytest.mark.usefixtures("ca_home")
def test_revoke_replaces_a_home_crl_that_is_a_symlink(cli: Cli, home: Path, tmp_path: Path) -> None:
    serial = json.loads(
        cli.ok("issue", "device", "d-1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    published = tmp_path / "www" / "issuing.crl.pem"
    published.parent.mkdir()
    published.write_text("old")
    crl = home / "crl" / "issuing.crl.pem"
    crl.parent.mkdir(exist_ok=True)
    crl.unlink(missing_ok=True)
    crl.symlink_to(published)
    cli.ok("revoke", serial)
    assert b"BEGIN X509 CRL" in crl.read_bytes()


def test_a_wrong_passphrase_is_named_whatever_the_decryption_yields(tmp_path: Path) -> None:
    """About 1 in 400 wrong passphrases decrypt to bytes that pass the padding check and
    fail ASN.1 parsing: still a wrong passphrase (exit 2), not a corrupt key (exit 1)."""
    from cryptography.hazmat.primitives import serialization

    from pki.backends.local import LocalCA
    from pki.errors import StorageError, WrongPassphrase
    from pki.keys import encrypt_key
    from tests.helpers import ec_key

    path = tmp_path / "issuing.key.pem"
    path.write_bytes(encrypt_key(ec_key(), b"correct horse battery"))
    garbling = None
    for i in range(20_000):  # P(none of them garbles) is below 1e-20
        candidate = b"wrong %d" % i
        try:
            serialization.load_pem_private_key(path.read_bytes(), password=candidate)
        except ValueError as exc:
            if "incorrect password" not in str(exc).lower():
                garbling = candidate
                break
    assert garbling is not None
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        LocalCA._load_key_file(path, lambda: garbling, "issuing")
    path.write_bytes(path.read_bytes().replace(b"M", b"!", 3))  # the PEM itself damaged
    with pytest.raises(StorageError, match="is corrupt"):
        LocalCA._load_key_file(path, lambda: b"correct horse battery", "issuing")
