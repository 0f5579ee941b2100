"""``fleetpki issue …``: device and server certificates from CSRs (or keys made here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.app import App
from pki.cli.options import (
    allow_key_reuse_option,
    batch_option,
    csr_option,
    days_option,
    err,
    format_option,
    generate_key_option,
    key_type_option,
    out_option,
    p12_option,
    print_json,
)
from pki.cli.root import cli, pass_app

if TYPE_CHECKING:
    from pki.model import CertificateRecord


# ------------------------------------------------------------------------------- issue


@cli.group()
def issue() -> None:
    """Issue device (client) and server certificates."""


@issue.command("device")
@click.argument("thing_name", required=False)
@csr_option("device")
@generate_key_option
@key_type_option
@batch_option("Issue")
@out_option
@format_option
@p12_option
@days_option
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    help="Processes signing a --batch (default: one per CPU for 200 CSRs or more).",
)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@allow_key_reuse_option
@click.option("--json", "as_json", is_flag=True, help="Print the issued records as JSON.")
@pass_app
def issue_device(
    app: App,
    thing_name: str | None,
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    batch_dir: Path | None,
    out_dir: Path,
    fmt: str,
    p12_passphrase_file: Path | None,
    days: int | None,
    workers: int | None,
    force: bool,
    allow_key_reuse: bool,
    as_json: bool,
) -> int:
    """Issue a device (clientAuth) certificate for THING_NAME, whose CN is the thing name.

    With --batch DIR, every THING.csr in DIR is issued (factory provisioning): a bad CSR
    is reported and skipped, the rest are issued; exit 2 if any was skipped.
    """
    from pki.errors import InvalidInput

    if batch_dir is not None:
        if thing_name or csr_file or generate_key:
            raise InvalidInput("--batch takes no THING_NAME, --csr or --generate-key")
        if fmt != "pem" or p12_passphrase_file is not None:
            raise InvalidInput("--batch writes PEM files; --format applies to one certificate")
        if allow_key_reuse:
            raise InvalidInput("--allow-key-reuse applies to one certificate, not a --batch")
        from pki.cli.batch import issue_device_batch

        return issue_device_batch(app, batch_dir, out_dir, days, force, as_json, workers)
    if workers is not None:
        raise InvalidInput("--workers only applies to --batch")
    if not thing_name:
        raise InvalidInput("give a THING_NAME (or --batch DIR)")
    return _issue_one(
        app,
        "device",
        thing_name,
        csr_file,
        generate_key,
        key_type,
        out_dir,
        days,
        force,
        as_json,
        (),
        (),
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
        allow_key_reuse=allow_key_reuse,
    )


@issue.command("server")
@click.argument("name")
@click.option("--dns", multiple=True, help="DNS name (repeatable). Default: NAME.")
@click.option("--ip", multiple=True, help="IP address (repeatable).")
@csr_option("server")
@generate_key_option
@key_type_option
@out_option
@format_option
@p12_option
@days_option
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@allow_key_reuse_option
@click.option("--json", "as_json", is_flag=True, help="Print the issued record as JSON.")
@pass_app
def issue_server(
    app: App,
    name: str,
    dns: tuple[str, ...],
    ip: tuple[str, ...],
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    out_dir: Path,
    fmt: str,
    p12_passphrase_file: Path | None,
    days: int | None,
    force: bool,
    allow_key_reuse: bool,
    as_json: bool,
) -> int:
    """Issue a server (serverAuth) certificate for NAME with DNS/IP SANs."""
    import ipaddress

    from pki.errors import InvalidInput

    ips = []
    for text in ip:
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidInput(f"--ip {text!r} is not an IP address") from None
    return _issue_one(
        app,
        "server",
        name,
        csr_file,
        generate_key,
        key_type,
        out_dir,
        days,
        force,
        as_json,
        dns,
        tuple(ips),
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
        allow_key_reuse=allow_key_reuse,
    )


def _issue_one(
    app: App,
    profile: str,
    name: str,
    csr_file: Path | None,
    generate_key: bool,
    key_type: str,
    out_dir: Path,
    days: int | None,
    force: bool,
    as_json: bool,
    dns: tuple[str, ...],
    ips: tuple[Any, ...],
    *,
    fmt: str = "pem",
    p12_passphrase_file: Path | None = None,
    allow_key_reuse: bool = False,
) -> int:
    from pki.cli.output import report_settled
    from pki.issue.delivery import single_request
    from pki.model import KeyType

    settled, done = app.interrupted_issue(out_dir, name, profile)
    report_settled(settled)
    if done is not None:  # what the interrupted run was asked (--force too): now done
        _report_issued(app, [done], as_json, out_dir)
        return 0
    request, deliver = single_request(
        profile=profile,
        name=name,
        csr_file=csr_file,
        generate_key=generate_key,
        key_type=KeyType(key_type),
        out_dir=out_dir,
        days=days,
        force=force,
        actor=app.home.actor(),
        dns=dns,
        ips=ips,
        fmt=fmt,
        p12_passphrase_file=p12_passphrase_file,
        allow_key_reuse=allow_key_reuse,
    )
    issued = app.issuer().issue(request, deliver)
    if issued.existing and not as_json:
        err(
            f"this key already has the active certificate {issued.record.serial_hex} for "
            f"{issued.record.common_name} (issued {issued.record.created_at:%Y-%m-%d %H:%M}Z): "
            f"delivered again, nothing new signed -> {out_dir}"
        )
        return 0
    _report_issued(app, [issued.record], as_json, out_dir)
    return 0


def _report_issued(
    app: App, records: Sequence[CertificateRecord], as_json: bool, out: Path | None
) -> None:
    if as_json:
        data = [r.to_json(app.now()) for r in records]
        print_json(data[0] if len(data) == 1 and out is not None else data)
        return
    for r in records:
        err(
            f"issued {r.profile} certificate for {r.common_name}: serial {r.serial_hex}, "
            f"valid until {r.not_after:%Y-%m-%d %H:%M}Z" + (f" -> {out}" if out else "")
        )
