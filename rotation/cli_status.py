"""``fleetpki rotation status|pause|resume``: what rotation is doing, and stopping it."""

from __future__ import annotations

from typing import Any

import click

from pki.cli.options import err, print_json
from rotation.cli_common import current_app as _state

# ------------------------------------------------------------------------------ status


@click.command("status")
@click.argument("thing", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(thing: str | None, as_json: bool) -> None:
    """Rotations by state, the latest failures, which daemon holds the lease, and warnings:
    no daemon running, a CRL stale or near its nextUpdate (in the home, or as the running
    stand-ins serve it). With THING: that device's rotations, newest first, its current
    state, when it is asked again and the last error."""
    from pki.text import escape_controls
    from rotation.runtime import status, thing_status

    if thing is not None:
        _print_thing(thing_status(_state(), thing), as_json)
        return
    data = status(_state())
    if as_json:
        print_json(data)
        return
    click.echo(", ".join(f"{k} {v}" for k, v in data["states"].items()))
    click.echo(f"daemon: {data['daemon'] or 'not running'}")
    click.echo(f"paused: {'yes' if data['paused'] else 'no'}")
    for r in data["recent_failures"]:
        click.echo(f"failed {escape_controls(r['name'])} ({r['requested_at']}): "
                   f"{escape_controls(str(r['error']))}")  # fmt: skip
    for warning in data["warnings"]:
        err(f"fleetpki: warning: {escape_controls(warning)}")


@click.command("pause")
@click.option("--reason", metavar="TEXT", help="Why (kept with the pause and in the audit log).")
def pause_command(reason: str | None) -> None:
    """Pause rotation on this inventory: no daemon or wave asks a device anything new or
    again (answers to what was already asked are still worked, and replaced certificates
    are still revoked after their grace period). Persisted; 'rotation resume' ends it."""
    from rotation.runtime import set_paused

    if set_paused(_state(), True, reason):
        err("rotation paused: nothing new is asked until 'fleetpki rotation resume'")
    else:
        err("rotation was already paused")


@click.command("resume")
def resume_command() -> None:
    """End a 'rotation pause': the daemon asks what is due at its next plan."""
    from rotation.runtime import set_paused

    if set_paused(_state(), False):
        err("rotation resumed")
    else:
        err("rotation was not paused")


def _print_thing(data: dict[str, Any], as_json: bool) -> None:
    from pki.text import escape_controls

    if as_json:
        print_json(data)
        return
    name = escape_controls(data["thing"])
    click.echo(f"{name}: {data['state'] or 'never rotated'}")
    click.echo(f"active certificates: {', '.join(data['active_certificates']) or 'none'}")
    if data["next_attempt_at"] and data["state"] in ("requested", "issued"):
        click.echo(f"asked again at: {data['next_attempt_at']}")
    if data["last_error"]:
        click.echo(f"last error: {escape_controls(data['last_error'])}")
    for r in data["rotations"]:
        click.echo(
            f"  {r['requested_at']}  {r['state']:<9}  {r['old_serial']} -> "
            f"{r['new_serial'] or '-'}  (asked {r['attempts']}x)"
        )
