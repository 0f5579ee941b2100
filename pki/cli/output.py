"""What commands print: messages on stderr, records as JSON or a table on stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import datetime as dt

    from pki.issue.pending import Settled
    from pki.model import CertificateRecord


def err(message: str) -> None:
    """A message for the operator, on stderr."""
    click.echo(message, err=True)


def print_json(data: Any) -> None:
    """Records as JSON, on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_records(records: Sequence[CertificateRecord], now: dt.datetime) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("serial", "name", "profile", "status", "not after", "sha256"):
        table.add_column(column, no_wrap=True)
    for r in records:
        table.add_row(
            r.serial_hex,
            r.thing or r.common_name,
            r.profile,
            r.effective_status(now).value,
            f"{r.not_after:%Y-%m-%d %H:%M}",
            r.fingerprint_sha256[:16],
        )
    Console(width=200).print(table)
    err(f"{len(records)} certificate(s)")


def report_settled(settled: Settled) -> None:
    """What finishing a crashed run's deliveries did, a line per certificate."""
    from pki.model import serial_hex
    from pki.text import escape_controls

    for item in settled.delivered:
        folder = ", ".join(sorted(str(f) for f in item.folders))
        err(
            f"delivered certificate {serial_hex(item.serial)}, recorded by an interrupted "
            f"run, into {escape_controls(folder)}"
        )
    for item, why in settled.withdrawn:
        err(
            f"withdrew certificate {serial_hex(item.serial)}, recorded by an interrupted run "
            f"but never delivered (revoked as superseded): {escape_controls(why)}"
        )
    for item, why in settled.dropped:
        err(
            f"gave up delivering certificate {serial_hex(item.serial)} again (an "
            f"interrupted run's; it stays active where it was): {escape_controls(why)}"
        )
