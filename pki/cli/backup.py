"""``fleetpki backup`` and ``fleetpki restore`` (``pki.backup``)."""

from __future__ import annotations

from pathlib import Path

import click

from pki.app import App
from pki.cli.output import err
from pki.cli.root import cli, pass_app


@cli.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--with-passphrase",
    is_flag=True,
    help="Also copy HOME/ca-passphrase (then the backup alone unlocks the CA: keep it as "
    "safe as the CA itself).",
)
@pass_app
def backup_cmd(app: App, dest: Path, with_passphrase: bool) -> None:
    """Copy the home and its SQLite inventory into the new folder DEST, consistently
    (SQLite's online backup: fleetpki may keep running). The CA keys stay encrypted; the
    passphrase file is left out unless --with-passphrase."""
    from pki.backup import backup

    result = backup(app, dest, with_passphrase=with_passphrase)
    err(f"backed up {result.files} file(s) of {app.home.path} into {result.path}")
    if result.postgres_url is not None:
        err(
            "the inventory is PostgreSQL: back it up with pg_dump, e.g. "
            f"pg_dump --format=custom --file {result.path}/inventory.pgdump "
            f"'{result.postgres_url.replace('postgresql+psycopg://', 'postgresql://', 1)}' "
            "(the password from ~/.pgpass or PGPASSFILE)"
        )
    if not with_passphrase:
        err("the CA passphrase is not in the backup: keep it apart (HOME/ca-passphrase)")


@cli.command("restore")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--published-crl",
    "published",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A CRL relying parties have now (PEM or DER; repeatable): the restored home's "
    "next CRL number goes past it.",
)
@pass_app
def restore_cmd(app: App, source: Path, published: tuple[Path, ...]) -> None:
    """Make the home (--home, new or empty) from the backup SOURCE, its digests checked.
    Every CRL signed afterwards is numbered past the backup's and the --published-crl
    files': relying parties never see a CRL number go back."""
    from pki.backup import restore

    result = restore(app, source, published)
    err(f"restored {source} into {result.home}")
    for which, number in sorted(result.crl_numbers.items()):
        err(f"the {which} CA's next CRL is numbered past #{number}")
    err("run 'fleetpki crl' (and 'fleetpki crl --root') before serving this home's CRLs")
