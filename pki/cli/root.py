"""The ``fleetpki`` root command group: the home option, the command groups other
packages register under ``fleetpki.commands``, and the ``App`` every command gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pki import __version__
from pki.app import App

ENTRY_POINT_GROUP = "fleetpki.commands"

pass_app = click.make_pass_decorator(App)


def current_app() -> App:
    """The ``App`` of the running command (for the command groups of other packages)."""
    app = click.get_current_context().find_object(App)
    assert app is not None, "fleetpki commands run under the fleetpki root group"
    return app


class PluginGroup(click.Group):
    """Adds the command groups other packages register under ``fleetpki.commands``."""

    def _plugins(self) -> dict[str, Any]:
        from pki import plugins

        return {ep.name: ep for ep in plugins.entry_points(ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        plugin = self._plugins().get(cmd_name)
        if plugin is None:
            return None
        try:
            loaded = plugin.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            return _broken_plugin(cmd_name, plugin.value, exc)
        return loaded if isinstance(loaded, click.Command) else None


def _broken_plugin(name: str, target: str, exc: Exception) -> click.Command:
    message = f"command group {name!r} ({target}) failed to load: {type(exc).__name__}: {exc}"

    def fail() -> None:
        from pki.errors import FleetPkiError

        raise FleetPkiError(message)

    return click.Command(
        name,
        callback=fail,
        help=f"(unavailable: {message})",
        context_settings={"ignore_unknown_options": True},
    )


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FLEETPKI_HOME",
    default=".fleetpki",
    show_default=True,
    help="Directory holding the CA, its configuration and the SQLite inventory "
    "(env FLEETPKI_HOME).",
)
@click.version_option(__version__, prog_name="fleetpki")  # no metadata lookup: a fast --version
@click.pass_context
def cli(ctx: click.Context, home: Path) -> None:
    """fleetpki: certificates and mTLS for device fleets.

    Issue, list and revoke device (client) and server certificates from a local CA or
    AWS Private CA, publish CRLs and trust bundles, provision IoT Core, and rotate
    certificates before they expire. Exit codes: 0 success, 2 operator error, 1 internal
    or backend failure, 130 interrupted.

    \b
    Environment:
      FLEETPKI_HOME             the home (like --home)
      FLEETPKI_DATABASE_URL     the inventory (default: SQLite in the home), e.g.
                                postgresql://user@host:5432/fleet
      FLEETPKI_CA_PASSPHRASE    passphrase of the CA keys (default: HOME/ca-passphrase)
      FLEETPKI_ROOT_PASSPHRASE  the root key's own passphrase, when it has one
      AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL   the AWS settings
    """
    app: App = ctx.obj
    app.home_path = home
