"""``fleetpki db …``: the inventory's schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pki.app import App
from pki.cli.options import (
    err,
    print_json,
)
from pki.cli.root import cli, pass_app

if TYPE_CHECKING:
    pass


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
    from pki.storage import migrate, open_engine, redact_url

    engine = open_engine(app.home.database_url)
    try:
        found = migrate.state(engine)
    finally:
        engine.dispose()
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
    from pki.storage import migrate, open_engine, redact_url

    engine = open_engine(app.home.database_url)
    try:
        before = migrate.state(engine)
        revisions = migrate.upgrade(engine)
    finally:
        engine.dispose()
    where = redact_url(app.home.database_url)
    if before.at_head:
        err(f"{where} is already at {', '.join(revisions)}")
    else:
        err(f"upgraded {where} from {before.describe()} to {', '.join(revisions)}")
