"""``fleetpki ca …``: create and inspect the certificate authority."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from pki.app import App
from pki.cli.options import (
    KEY_TYPES,
    err,
    pem_or_der_option,
    print_json,
)
from pki.cli.output import print_records
from pki.cli.root import cli, pass_app
from pki.text import escape_controls

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------------------------- ca


@cli.group()
def ca() -> None:
    """Create and inspect the certificate authority."""


@ca.command("init")
@click.option(
    "--backend",
    type=click.Choice(["local", "aws-pca"]),
    default="local",
    show_default=True,
    help="local: keys in the home. aws-pca: AWS Private CA (--ca-arn ARN or --create).",
)
@click.option("--ca-arn", help="aws-pca: adopt this existing Private CA (its chain is checked).")
@click.option(
    "--create",
    is_flag=True,
    help="aws-pca: create a root + subordinate Private CA hierarchy (test and demo use).",
)
@click.option("--region", help="aws-pca: AWS region (default: the standard AWS settings).")
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="ec-p256",
    show_default=True,
    help="Key type of the root and issuing CA.",
)
@click.option(
    "--common-name",
    default="fleetpki",
    show_default=True,
    help="Name of the CA; the certificates are '<NAME> Root CA' and '<NAME> Issuing CA'.",
)
@click.option("--root-days", type=int, default=3650, show_default=True, help="Root lifetime.")
@click.option(
    "--issuing-days",
    type=int,
    default=1825,
    show_default=True,
    help="Issuing CA lifetime (must be shorter than the root's).",
)
@click.option(
    "--publish-url",
    metavar="URL",
    help="local: an http:// base URL where relying parties fetch the CRLs and CA "
    "certificates (URL/crl/<ca>.crl, URL/ca/<ca>.cer); every certificate names them "
    "(CRL distribution point, caIssuers). 'fleetpki dev up' serves them on loopback.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the CA certificates as JSON.")
@pass_app
def ca_init(
    app: App,
    backend: str,
    ca_arn: str | None,
    create: bool,
    region: str | None,
    key_type: str,
    common_name: str,
    root_days: int,
    issuing_days: int,
    publish_url: str | None,
    as_json: bool,
) -> None:
    """Create a root CA and an issuing intermediate (path length 0), and the first CRL of
    each (HOME/crl/).

    The keys are encrypted with FLEETPKI_CA_PASSPHRASE; when it is unset a random
    passphrase is generated into HOME/ca-passphrase (mode 0600). The root key gets
    FLEETPKI_ROOT_PASSPHRASE when that is set (then the root key may be moved offline:
    only 'fleetpki crl --root' needs it). Refuses to overwrite an existing CA, and an
    inventory (FLEETPKI_DATABASE_URL) that holds another CA hierarchy.
    """
    from pki.ca import setup

    options = setup.CaInitOptions(ca_arn, create, region, key_type, common_name, root_days,
                                  issuing_days, publish_url)  # fmt: skip
    if backend == "aws-pca":
        result = setup.set_up_private_ca(app, options, say=err)
        _report_ca(app, result, as_json, f"adopted AWS Private CA {app.home.config().ca_arn}")
        return
    result = setup.set_up_local_ca(app, options)
    if result.generated_passphrase:
        err(
            f"generated a CA key passphrase into {app.home.passphrase_path} (mode 0600); "
            "back it up, or set FLEETPKI_CA_PASSPHRASE instead"
        )
    _report_ca(app, result, as_json, f"created CA '{common_name}' ({key_type})")


def _report_ca(app: App, result: Any, as_json: bool, what: str) -> None:
    if as_json:  # the same shape as 'ca show --json'
        from pki.ca.status import ca_status

        print_json(ca_status(app.home, app.inventory(), app.now()).to_json())
        return
    err(f"{what} in {app.home.path}")
    for record in result.records:
        err(
            f"  {record.profile:<11} {record.common_name}  serial {record.serial_hex}  "
            f"valid until {record.not_after:%Y-%m-%d}"
        )


@ca.command("chain")
@click.option(
    "--root",
    is_flag=True,
    help="Only the root CA (what a trust store imports: keytool -importcert, a bundle).",
)
@click.option(
    "--issuing",
    is_flag=True,
    help="Only the issuing CA (what follows a leaf certificate in a full chain).",
)
@pem_or_der_option("der: one certificate only (with --root or --issuing).")
@pass_app
def ca_chain(app: App, root: bool, issuing: bool, fmt: str) -> None:
    """Print the CA chain as PEM: issuing CA first, then the root (or one of them)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.errors import InvalidInput

    if root and issuing:
        raise InvalidInput("give --root or --issuing, not both (without either: the chain)")
    which = "root" if root else "issuing" if issuing else None

    chain = app.ca().chain()
    certs = chain[-1:] if which == "root" else chain[:1] if which == "issuing" else chain
    if fmt == "der":
        if which is None:
            raise InvalidInput("--format der holds one certificate: add --root or --issuing")
        if sys.stdout.isatty():
            raise InvalidInput("refusing to write DER to a terminal; redirect it to a file")
        sys.stdout.buffer.write(certs[0].public_bytes(Encoding.DER))
        sys.stdout.flush()
        return
    for cert in certs:
        click.echo(cert.public_bytes(Encoding.PEM).decode(), nl=False)


@ca.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def ca_show(app: App, as_json: bool) -> None:
    """Show the CA certificates, the configuration and each CA's published CRL (number,
    nextUpdate; a warning when one is due for re-signing or has expired)."""
    from pki.ca.status import ca_status

    status = ca_status(app.home, app.inventory(), app.now())
    if as_json:
        print_json(status.to_json())
        return
    config = app.home.config()
    click.echo(f"backend {config.backend}, key type {config.key_type}, home {app.home.path}")
    print_records(list(status.certificates), app.now())
    for health in status.crls:
        if health.number is None:
            click.echo(f"{health.ca} CRL: none published")
            continue
        click.echo(
            f"{health.ca} CRL #{health.number}: next update {health.next_update:%Y-%m-%d %H:%M}Z"
            f", re-signed from {health.refresh_at:%Y-%m-%d %H:%M}Z ({health.state})"
        )
    if status.crls:
        click.echo(f"all CRLs: {app.home.combined_crl_path}")
    if status.rollover is not None:
        planned = status.rollover.planned
        click.echo(
            f"issuing CA rollover: prepare from {planned.prepare:%Y-%m-%d}, successor issues "
            f"from {planned.activate:%Y-%m-%d}, expires {status.rollover.not_after:%Y-%m-%d}"
        )
    for warning in status.warnings:
        err(f"fleetpki: warning: {escape_controls(warning)}")
