"""``fleetpki rotation server …``: server certificates kept current on disk (an entry
point's subgroup: ``rotation.cli`` adds it)."""

from __future__ import annotations

from pathlib import Path

import click

from pki.cli.options import KEY_TYPES, err, print_json
from rotation.cli_common import current_app as _state
from rotation.cli_common import settings as _settings


@click.group("server")
def server_group() -> None:
    """Server certificates kept current on disk: DIR/current -> DIR/versions/SERIAL/
    (key.pem, cert.pem, chain.pem, fullchain.pem), swapped atomically, then the server's
    reload command. Configure the server with DIR/current/fullchain.pem and
    DIR/current/key.pem."""


@server_group.command("add")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The folder the server reads its certificate from.",
)
@click.option("--dns", multiple=True, help="DNS name (repeatable; default: NAME itself).")
@click.option("--ip", "ips", multiple=True, help="IP address (repeatable).")
@click.option(
    "--days",
    type=click.IntRange(1, 397),
    default=90,
    show_default=True,
    help="Validity of each certificate (every replacement gets the same).",
)
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="ec-p256",
    show_default=True,
    help="Key made on this host for each certificate.",
)
@click.option(
    "--reload-command",
    metavar="CMD",
    help="Run after each replacement, without a shell (e.g. 'systemctl reload nginx').",
)
@click.option(
    "--group",
    default="",
    help="A group that may read the key (0640; for a server that drops privileges, e.g. "
    "mosquitto).",
)
@click.option(
    "--no-reload",
    is_flag=True,
    help="Do not run the reload command now (the server is not running yet); the daemon "
    "runs it after each replacement.",
)
@click.option("--force", is_flag=True, help="Replace an existing target of that name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_add(
    name: str,
    directory: Path,
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    days: int,
    key_type: str,
    reload_command: str | None,
    group: str,
    no_reload: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Issue a server certificate into --dir now and keep it current from then on (the
    daemon replaces it past its renewal time, with the same names and lifetime).

    The reload command runs once now; when that fails (the server is not running yet)
    the target stays added and this prints a warning, exit 0: 'add && start nginx'
    works. --no-reload skips it."""
    from rotation import servers

    state = _state()
    target = servers.ServerTarget.from_options(
        name, directory, dns, ips, reload_command, key_type=key_type, days=days, group=group
    )
    placed, warning = servers.add(
        state.inventory().engine,
        state.issuer(),
        target,
        state.clock.now(),
        state.home.actor(),
        force=force,
        reload_now=not no_reload,
    )
    if warning:
        err(f"fleetpki: warning: {name}: {warning}")
    if as_json:
        print_json(placed.to_json() | {"warning": warning})
    else:
        click.echo(f"{name}: certificate {placed.serial} in {placed.current}")


@server_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_list(as_json: bool) -> None:
    """The server targets and the certificate each has installed."""
    from rotation import servers

    engine = _state().inventory().engine
    found = servers.targets(engine)
    if as_json:
        print_json([t.to_json() for t in found])
        return
    for t in found:
        click.echo(f"{t.name:<32} {t.serial}  {t.current}")
    if not found:
        click.echo("no server targets (add one with 'fleetpki rotation server add')")


@server_group.command("remove")
@click.argument("name")
def server_remove(name: str) -> None:
    """Stop keeping NAME current (its files and certificates stay as they are)."""
    from rotation import servers

    engine = _state().inventory().engine
    gone = servers.remove(engine, name)
    click.echo(f"no longer rotating {name} ({gone.current} left in place)")


@server_group.command("rotate")
@click.argument("name")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long the old certificate stays valid after the server was reloaded with the "
    "new one (0: revoke it at once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_rotate(name: str, grace: str, as_json: bool) -> int:
    """Replace NAME's certificate now (e.g. after a key compromise), reload the server,
    and revoke the old certificate after --grace (0: now)."""
    from pki.errors import BackendError
    from rotation.runtime import rotate_server_now

    row = rotate_server_now(_state(), name, _settings(grace, "15m"))
    rows = [row]
    if as_json:
        print_json(rows[0].to_json())
    else:
        click.echo(f"{name}: {rows[0].state.value}, certificate {rows[0].new_serial}")
    if rows[0].state.value == "failed":
        raise BackendError(f"rotate {name}", "server", rows[0].error or "failed")
    return 0
