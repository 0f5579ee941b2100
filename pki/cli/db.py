"""``fleetpki db …``: the inventory's schema."""

from __future__ import annotations

import click

from pki.app import App
from pki.cli.options import (
    err,
    print_json,
)
from pki.cli.root import cli, pass_app

# ----------------------------------------------------------------------------------- db


@cli.group("db")
def db() -> None:
    """The inventory's schema: which migrations it is at, and upgrading it."""


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def db_current(app: App, as_json: bool) -> int:
    """The schema revisions the inventory (FLEETPKI_DATABASE_URL, or the home's SQLite
    file) is at, against the ones this fleetpki needs. Exit 1 when it needs 'fleetpki db
    upgrade' (or a newer fleetpki)."""
    from pki.storage import migrate, redact_url

    found = migrate.inspect_database(app.home.database_url)
    data = {
        "database": redact_url(app.home.database_url),
        "revisions": sorted(found.revisions),
        "expected": sorted(found.expected),
        "state": "current" if found.at_head else "newer" if found.newer else
                 "empty" if found.empty else "legacy" if found.legacy else "older",
    }  # fmt: skip
    if as_json:
        print_json(data)
    else:
        click.echo(f"{data['database']}: {found.describe()} ({data['state']})")
        if not found.at_head and not found.empty:
            click.echo(
                "upgrade fleetpki"
                if found.newer
                else "run 'fleetpki db upgrade' (back it up first)"
            )
    return 0 if found.at_head else 1


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Run the migrations the inventory lacks, in one transaction (a database made before
    migrations is recognised and brought along with its rows). Back the inventory up
    first ('sqlite3 inventory.db ".backup copy.db"', or pg_dump)."""
    from pki.storage import migrate, redact_url

    before, revisions = migrate.upgrade_database(app.home.database_url)
    where = redact_url(app.home.database_url)
    if before.at_head:
        err(f"{where} is already at {', '.join(revisions)}")
    else:
        err(f"upgraded {where} from {before.describe()} to {', '.join(revisions)}")
