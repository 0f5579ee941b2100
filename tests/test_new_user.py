"""Defects found trying fleetpki as a new user would (the interop issue, §6): each test
here failed on the main the issue was filed against. Rotation-side ones are in test_rotation.py, the
broker's subscription refusal in test_standins.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import click
import click.testing
import pytest

from pki.cli import cli as root_command
from tests.conftest import Cli

FLEETPKI = Path(sys.executable).parent / "fleetpki"


# -- 1. an inventory belongs to one CA hierarchy ----------------------------------------


def test_two_homes_cannot_share_one_inventory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str | None
) -> None:
    shared = db_url or f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", shared)
    a, b = tmp_path / "a", tmp_path / "b"
    cli.ok("--home", a, "ca", "init", "--common-name", "A")
    serial = json.loads(
        cli.ok(
            "--home",
            a,
            "issue",
            "device",
            "d-1",
            "--generate-key",
            "--out",
            tmp_path / "d",
            "--json",
        ).out
    )["serial"]
    refused = cli("--home", b, "ca", "init", "--common-name", "B")
    assert refused.code == 2
    assert "already holds another CA hierarchy" in refused.err and refused.err.count("\n") == 1
    assert not (b / "config.json").exists() and not (b / "ca").exists()
    # a home B made on its own database, then pointed at A's: every command refuses
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", f"sqlite:///{tmp_path / 'b.db'}")
    cli.ok("--home", b, "ca", "init", "--common-name", "B")
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", shared)
    for argv in (("list",), ("revoke", serial), ("bundle", "build", "--target", "alb")):
        result = cli("--home", b, *argv)
        assert result.code == 2, argv
        assert "belongs to another CA hierarchy" in result.err
    assert json.loads(cli.ok("--home", a, "show", serial, "--json").out)["status"] == "active"


def test_a_home_from_before_hierarchy_ids_claims_its_own_inventory(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    cli.ok("ca", "init")
    config = json.loads((home / "config.json").read_text())
    del config["hierarchy_id"]  # as 'ca init' wrote it before this change
    (home / "config.json").write_text(json.dumps(config))
    from pki.storage import HIERARCHY_KEY, Inventory, meta

    inventory = Inventory.open(f"sqlite:///{home / 'inventory.db'}")
    with inventory.transaction() as conn:
        conn.execute(meta.delete().where(meta.c.key == HIERARCHY_KEY))
    inventory.close()
    cli.ok("list")  # it holds this home's CA: claimed
    claimed = json.loads((home / "config.json").read_text())["hierarchy_id"]
    assert claimed and Inventory.open(f"sqlite:///{home / 'inventory.db'}").hierarchy() == claimed


# -- 3. Ctrl-C ------------------------------------------------------------------------


def test_ctrl_c_is_interrupted_with_exit_130(tmp_path: Path) -> None:
    env = dict(os.environ, FLEETPKI_HOME=str(tmp_path / "home"))
    subprocess.run([FLEETPKI, "ca", "init"], env=env, check=True, capture_output=True, timeout=60)
    # waits for a CSR on standard input that never comes
    proc = subprocess.Popen(
        [FLEETPKI, "issue", "device", "d-1", "--csr", "-", "--out", tmp_path / "out"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _blocked_reading(proc.pid)  # the command is up and blocked on its input
        proc.send_signal(signal.SIGINT)
        # wait with standard input still open: communicate() would close it at once, and
        # a child slow to take the signal would read the end of its input first
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGINT: {_where(proc.pid)}")
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert (proc.returncode, err) == (130, "fleetpki: interrupted\n")
    assert not (tmp_path / "out").exists()


def _where(pid: int) -> str:
    """What a process is blocked on, thread by thread (for a failure message)."""
    found = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            found.append(f"{task.name}:{(task / 'wchan').read_text() or 'running'}")
        except OSError:
            continue
    return ", ".join(found) or "gone"


def _blocked_reading(pid: int, timeout: float = 60.0) -> None:
    """Until the process waits in a read of its standard input (a pipe), not a fixed
    sleep that a loaded machine outruns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "pipe" in Path(f"/proc/{pid}/wchan").read_text():
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the command never waited for its input: {_where(pid)}")


# -- 4. the simulator never writes into the operator's inventory --------------------------


def test_the_simulator_uses_a_home_of_its_own(cli: Cli, home: Path) -> None:
    cli.ok("ca", "init")
    before = cli.ok("audit", "--json", "--limit", "1000").out
    result = subprocess.run(
        [FLEETPKI, "fleet", "simulate", "--devices", "3", "--duration", "1", "--json"],
        env=dict(os.environ, FLEETPKI_HOME=str(home)), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = re.search(r"simulating in a home of its own: (\S+) ", result.stderr)
    assert match and not Path(match.group(1)).parent.exists()  # removed afterwards, all of it
    assert json.loads(result.stdout)["devices"] == 3
    assert cli.ok("audit", "--json", "--limit", "1000").out == before
    assert json.loads(cli.ok("list", "--json").out) == []
    assert not (home / "dev").exists()


# -- 5. ALB against an endpoint that does not implement it --------------------------------


def test_alb_against_moto_is_one_line_naming_service_and_operation(
    cli: Cli, ca_home: Path, aws: str
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="trust")
    s3.put_bucket_versioning(Bucket="trust", VersioningConfiguration={"Status": "Enabled"})
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:truststore/ts/0123456789abcdef"
    for argv in (
        ("bundle", "publish", "--target", "alb", "--bucket", "trust", "--key", "b.pem",
         "--trust-store", arn),
        ("crl", "publish", "--trust-store", arn, "--crl-uri", "s3://trust/crl"),
    ):  # fmt: skip
        result = cli(*argv)
        assert result.code == 1
        assert result.err.count("\n") == 1 and "internal error" not in result.err
        assert "(elbv2 DescribeTrustStores) failed: the endpoint at" in result.err
        assert "did not answer as AWS does" in result.err


# -- 6. Private CAs created for a hierarchy that then fails are taken down ------------------


def test_a_failed_private_ca_hierarchy_is_disabled_and_deleted(cli: Cli, aws: str) -> None:
    # stock moto issues CA certificates without extensions: fleetpki refuses the chain
    result = cli("ca", "init", "--backend", "aws-pca", "--create")
    assert result.code == 2
    created = re.findall(r"created AWS Private CA (arn:\S+)", result.err)
    assert len(created) == 2
    pca = boto3.client("acm-pca")
    statuses = {
        ca["Arn"]: ca["Status"]
        for ca in pca.list_certificate_authorities()["CertificateAuthorities"]
    }
    assert {statuses[arn] for arn in created} == {"DELETED"}
    for arn in created:
        assert f"deleted {arn} (restorable for 7 days)" in result.err
    assert result.err.splitlines()[-1].startswith("fleetpki: error: AWS Private CA")


# -- 7. one JSON vocabulary -----------------------------------------------------------------

_CERT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_EVENT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_json_times_are_rfc3339_utc_with_z(cli: Cli, tmp_path: Path) -> None:
    init = json.loads(cli.ok("ca", "init", "--json").out)
    assert init.keys() == json.loads(cli.ok("ca", "show", "--json").out).keys()
    issued = json.loads(
        cli.ok("issue", "device", "d-1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )
    for record in (issued, *json.loads(cli.ok("list", "--json").out)):
        assert _CERT_TIME.match(record["not_before"]) and _CERT_TIME.match(record["not_after"])
        assert _EVENT_TIME.match(record["created_at"])
    for event in json.loads(cli.ok("audit", "--json").out):
        assert _EVENT_TIME.match(event["at"])
    for crl in init["crls"]:
        assert _CERT_TIME.match(crl["next_update"]) and _CERT_TIME.match(crl["this_update"])


# -- 8. no Python internals in normal output ---------------------------------------------------


def test_show_prints_names_not_python_lists(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    serial = json.loads(
        cli.ok(
            "issue",
            "server",
            "api.example",
            "--dns",
            "api.example",
            "--dns",
            "www.example",
            "--generate-key",
            "--out",
            tmp_path / "s",
            "--json",
        ).out
    )["serial"]
    text = cli.ok("show", serial).out
    assert "sans: api.example, www.example" in text
    assert "[" not in text and "'" not in text


def test_simulator_summary_has_no_python_reprs() -> None:
    from devices.cli_fleet import _print_summary

    data = {
        "devices": 2, "clients": {"paho": 2}, "connected": 1, "workers": 1,
        "refused": {"expired": 1}, "messages": {"sent": 1, "acked": 1, "lost": 0},
        "connect_latency_ms": {"p50": 1, "p99": 2}, "revoked": [], "impostors": [],
        "access_log": {"accepted": 1, "refused": {"revoked": 2}}, "timing": {"wall_seconds": 1},
        "checks": {"passed": False, "no_lost_messages": False},
    }  # fmt: skip
    runner = click.testing.CliRunner()

    @click.command()
    def show() -> None:
        _print_summary(data)

    text = runner.invoke(show).output
    assert "refused at connect: expired 1" in text
    assert "access log: accepted 1, refused revoked 2" in text
    assert "checks FAILED: no_lost_messages" in text
    assert "{" not in text and "'" not in text


# -- 9. errors are one line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), "fleetpki: error: fleetpki needs a command: audit, backup, bundle, ca, crl, db, dev, "
             "doctor, fleet, iot, issue, list, restore, revoke, rotation, show "
             "(see 'fleetpki --help')"),
        (("bundle", "build"), "fleetpki: error: Missing option '--target'. Choose from: apigw, "
                              "alb (see 'fleetpki bundle build --help')"),
        (("ca",), "fleetpki: error: fleetpki ca needs a command: chain, init, show "
                  "(see 'fleetpki ca --help')"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line(cli: Cli, argv: tuple[str, ...], expected: str) -> None:
    result = cli(*argv)
    assert (result.code, result.err, result.out) == (2, expected + "\n", "")


def test_untrusted_text_is_escaped(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    result = cli("issue", "server", "evil\x1b[2J\nissued 5000", "--generate-key",
                 "--out", tmp_path / "o")  # fmt: skip
    assert result.code == 2 and result.err.count("\n") == 1
    assert "\x1b" not in result.err and "\\x1b" in result.err


# -- 11. one duration grammar ----------------------------------------------------------------


def test_durations(cli: Cli, ca_home: Path) -> None:
    bare = cli("list", "--expiring-within", "30")
    assert bare.code == 2
    assert "'30' is not a duration: use a whole number with a unit: s, m, h, d, w or y" in bare.err
    cli.ok("list", "--expiring-within", "1y")
    from pki.model import parse_duration

    assert parse_duration("1y").days == 365 and parse_duration("2w").days == 14
    assert parse_duration("0").total_seconds() == 0


# -- 12. help text -------------------------------------------------------------------------------


def _commands(
    command: click.Command, ctx: click.Context, path: str
) -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found += _commands(
                sub, click.Context(sub, parent=ctx, info_name=name), f"{path} {name}"
            )
    return found


def test_every_command_and_option_has_help() -> None:
    ctx = click.Context(root_command, info_name="fleetpki")
    missing = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in _commands(root_command, ctx, "fleetpki")
        for param in command.params
        if isinstance(param, click.Option) and not param.help and param.name != "help"
    ]
    missing += [
        path for path, command in _commands(root_command, ctx, "fleetpki") if not command.help
    ]
    assert missing == []
    text = root_command.get_help(ctx)
    for variable in ("FLEETPKI_DATABASE_URL", "FLEETPKI_CA_PASSPHRASE", "FLEETPKI_HOME"):
        assert variable in text


def test_show_refuses_json_and_pem_together(cli: Cli, ca_home: Path, tmp_path: Path) -> None:
    serial = json.loads(
        cli.ok("issue", "device", "d-1", "--generate-key", "--out", tmp_path / "d", "--json").out
    )["serial"]
    result = cli("show", serial, "--json", "--pem")
    assert (result.code, result.out) == (2, "")
    assert "give one of them" in result.err


def test_readme_timings_mention_the_first_install() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "first run" in readme and "install" in readme


# -- the review's findings on the above ---------------------------------------------------------


def test_a_failed_ca_init_can_be_run_again(cli: Cli, home: Path) -> None:
    home.mkdir()
    (home / "crl").write_text("in the way")  # the CRL folder cannot be made
    failed = cli("ca", "init")
    assert failed.code == 2 and "crl" in failed.err
    assert not (home / "config.json").exists() and not (home / "ca").exists()
    (home / "crl").unlink()
    cli.ok("ca", "init")  # the inventory was left as it was: empty
    assert len(json.loads(cli.ok("ca", "show", "--json").out)["certificates"]) == 2


def test_old_homes_that_shared_an_inventory_are_refused(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homes from before hierarchy ids on one database: neither may claim it."""
    from pki.storage import HIERARCHY_KEY, AuditEvent, Inventory, meta

    a, b = tmp_path / "a", tmp_path / "b"
    cli.ok("--home", a, "ca", "init")
    cli.ok("--home", b, "ca", "init")
    shared = Inventory.open(f"sqlite:///{a / 'inventory.db'}")
    other = Inventory.open(f"sqlite:///{b / 'inventory.db'}")
    (b_init,) = [e for e in other.audit_log(100) if e.action == "ca-init"]
    with shared.transaction() as conn:  # what the old code let B write into A's inventory
        shared.audit(
            conn, [AuditEvent(b_init.at, "cli:b", "ca-init", b_init.serial, b_init.detail)]
        )
        conn.execute(meta.delete().where(meta.c.key == HIERARCHY_KEY))
    shared.close()
    other.close()
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", f"sqlite:///{a / 'inventory.db'}")
    for home in (a, b):
        config = json.loads((home / "config.json").read_text())
        del config["hierarchy_id"]
        (home / "config.json").write_text(json.dumps(config))
        result = cli("--home", home, "list")
        assert result.code == 2 and "holds another CA hierarchy" in result.err
        assert "hierarchy_id" not in json.loads((home / "config.json").read_text())


def test_an_inventory_restored_from_before_hierarchy_ids_is_claimed_again(
    cli: Cli, home: Path
) -> None:
    from pki.storage import HIERARCHY_KEY, Inventory, meta

    cli.ok("ca", "init")
    wanted = json.loads((home / "config.json").read_text())["hierarchy_id"]
    inventory = Inventory.open(f"sqlite:///{home / 'inventory.db'}")
    with inventory.transaction() as conn:
        conn.execute(meta.delete().where(meta.c.key == HIERARCHY_KEY))
    cli.ok("list")
    assert inventory.hierarchy() == wanted
    inventory.close()


def test_a_csr_with_openssls_readable_dump_first_is_accepted(
    cli: Cli, ca_home: Path, tmp_path: Path
) -> None:
    csr = tmp_path / "d.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k.pem"), "-subj", "/CN=dump-1", "-text",
         "-out", str(csr)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert csr.read_text().startswith("Certificate Request:")
    cli.ok("issue", "device", "dump-1", "--csr", csr, "--out", tmp_path / "o")
    trailing = tmp_path / "t.csr"
    trailing.write_bytes(csr.read_bytes() + b"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n")
    refused = cli("issue", "device", "dump-1", "--csr", trailing, "--out", tmp_path / "o2")
    assert refused.code == 2 and "data follows the certificate request" in refused.err


def test_create_refuses_an_inventory_of_another_hierarchy_before_creating_a_ca(
    cli: Cli, tmp_path: Path, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("FLEETPKI_DATABASE_URL", shared)
    cli.ok("--home", tmp_path / "local", "ca", "init")
    result = cli("--home", tmp_path / "pca", "ca", "init", "--backend", "aws-pca", "--create")
    assert result.code == 2 and "already holds another CA hierarchy" in result.err
    assert boto3.client("acm-pca").list_certificate_authorities()["CertificateAuthorities"] == []


def test_a_closed_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    env = dict(os.environ, FLEETPKI_HOME=str(tmp_path / "home"))
    subprocess.run([FLEETPKI, "ca", "init"], env=env, check=True, capture_output=True, timeout=60)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {FLEETPKI} ca chain | true"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_ca_chain_refuses_root_and_issuing_together(cli: Cli, ca_home: Path) -> None:
    result = cli("ca", "chain", "--root", "--issuing")
    assert (result.code, result.out) == (2, "")
    assert "give --root or --issuing, not both" in result.err


def test_run_refuses_timeout_without_once(cli: Cli, ca_home: Path) -> None:
    result = cli("rotation", "run", "--timeout", "1m", "--metrics-port", "0")
    assert (result.code, result.err) == (
        2,
        "fleetpki: error: --timeout goes with --once (the daemon runs until stopped)\n",
    )


def test_stand_ins_get_libfaketime_and_nothing_else_of_ld_preload() -> None:
    from pki.childenv import faketime_only

    assert faketime_only({"LD_PRELOAD": "/lib/evil.so"}) == {}
    shifted = {
        "FAKETIME": "+365d",
        "FAKETIME_DONT_RESET": "1",
        "LD_PRELOAD": "/lib/evil.so:/usr/lib/x/faketime/libfaketime.so.1",
        "FLEETPKI_CA_PASSPHRASE": "secret",
    }
    assert faketime_only(shifted) == {
        "FAKETIME": "+365d",
        "FAKETIME_DONT_RESET": "1",
        "LD_PRELOAD": "/usr/lib/x/faketime/libfaketime.so.1",
    }
