"""``fleetpki list``, ``show`` and ``audit``: what the inventory holds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from pki.app import App
from pki.cli.options import (
    print_json,
)
from pki.cli.output import err, print_records
from pki.cli.root import cli, pass_app

if TYPE_CHECKING:
    pass


# ------------------------------------------------------------------------ list / show


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice(["active", "revoked", "expired", "quarantined"]),
    help="Only certificates in this app.",
)
@click.option(
    "--expiring-within",
    metavar="DURATION",
    help="Only active certificates expiring within DURATION (e.g. 30d, 12h).",
)
@click.option("--thing", help="Only certificates of this thing.")
@click.option(
    "--profile",
    type=click.Choice(["device", "server", "root-ca", "issuing-ca"]),
    help="Only certificates of this profile.",
)
@click.option(
    "--limit", type=click.IntRange(min=1, max=1_000_000_000), help="At most this many rows."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_cmd(
    app: App,
    status: str | None,
    expiring_within: str | None,
    thing: str | None,
    profile: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List certificates in the inventory, soonest expiry first."""
    from pki.model import Status, parse_duration

    window = parse_duration(expiring_within) if expiring_within is not None else None
    records = app.inventory().find(
        now=app.now(),
        status=Status(status) if status else None,
        expiring_within=window,
        thing=thing,
        profile=profile,
        limit=limit,
    )
    if as_json:
        print_json([r.to_json(app.now()) for r in records])
        return
    print_records(records, app.now())


@cli.command("show")
@click.argument("serial")
@click.option(
    "--pem", is_flag=True, help="Print the certificate PEM instead of the record (not with --json)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show_cmd(app: App, serial: str, pem: bool, as_json: bool) -> None:
    """Show one certificate by serial (hex; colons and 0x are accepted)."""
    from pki.errors import InvalidInput
    from pki.model import parse_serial

    if pem and as_json:
        raise InvalidInput("--pem prints the certificate, --json the record: give one of them")
    number = parse_serial(serial)
    inventory = app.inventory()
    if pem:
        click.echo(inventory.get_pem(number), nl=False)
        return
    record = inventory.get(number)
    data = record.to_json(app.now())
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or None
        click.echo(f"{key:>20}: {value if value is not None else '-'}")


@cli.command("audit")
@click.option("--serial", help="Only events of this certificate.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=1_000_000_000),
    default=50,
    show_default=True,
    help="How many of the newest events.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--verify",
    is_flag=True,
    help="Check the hash chain over every event: exit 1 when an event was edited or deleted.",
)
@click.option(
    "--export",
    is_flag=True,
    help="Print every event, oldest first, as JSON lines with its chain hashes (for a SIEM).",
)
@pass_app
def audit_cmd(
    app: App, serial: str | None, limit: int, as_json: bool, verify: bool, export: bool
) -> int:
    """Show the append-only, tamper-evident audit log (issue, revoke, CRL, CA events),
    oldest first."""
    from pki.model import isoformat, parse_serial
    from pki.text import escape_controls

    if verify and export:
        raise click.UsageError("give --verify or --export, not both")
    if verify:
        return _verify_audit(app)
    if export:
        for row in app.inventory().audit_rows():
            click.echo(json.dumps(row, sort_keys=True))
        return 0
    events = app.inventory().audit_log(limit, parse_serial(serial) if serial is not None else None)
    if as_json:
        print_json([e.to_json() for e in events])
        return 0
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()) if v is not None)
        line = f"{isoformat(e.at)} {e.actor} {e.action} {e.serial or '-'} {detail}"
        click.echo(escape_controls(line))
    return 0


def _verify_audit(app: App) -> int:
    from pki.text import escape_controls

    report = app.inventory().verify_audit()
    for problem in report.problems:
        err(f"audit log: {escape_controls(problem)}")
    if not report.intact:
        err(f"audit log NOT intact: {len(report.problems)} problem(s) in {report.events} events")
        return 1
    err(f"audit log intact: {report.events} events, newest hash {report.head or '-'}")
    return 0
