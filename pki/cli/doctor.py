"""``fleetpki doctor``: what faults left behind, and how to repair it (``pki.doctor``)."""

from __future__ import annotations

from pathlib import Path

import click

from pki.app import App
from pki.cli.output import err, print_json
from pki.cli.root import cli, pass_app


@cli.command("doctor")
@click.option(
    "--out",
    "outs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A delivery folder to check too (an issue --out, or a --batch --out with a "
    "folder per thing); repeatable.",
)
@click.option("--repair", is_flag=True, help="Make the repairs that are safe.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@pass_app
def doctor_cmd(app: App, outs: tuple[Path, ...], repair: bool, as_json: bool) -> int:
    """Check the home and its inventory for what crashes, restores and neglect leave:
    deliveries recorded and never done, leftover temporary files, delivered certificates
    without a row (with --out), CRLs behind the inventory or near nextUpdate, revoked
    certificates not on the CRL, certificates of a CA no longer issued from, a broken
    audit chain. Exit 0 when nothing is left to repair, 1 otherwise."""
    from pki.doctor import examine
    from pki.text import escape_controls

    result = examine(app, outs, repair=repair)
    if as_json:
        print_json(
            {"checked": result.checked, "findings": [f.to_json() for f in result.findings]}
        )
    else:
        for finding in result.findings:
            mark = "repaired" if finding.repaired else "PROBLEM"
            err(f"{mark} [{finding.check}] {escape_controls(finding.problem)}")
            err(f"    -> {escape_controls(finding.fix)}")
        left = len(result.open_problems)
        err(
            f"checked {', '.join(result.checked)}: "
            + (f"{left} problem(s) left" if left else "nothing left to repair")
        )
    return 1 if result.open_problems else 0
