"""Shared by every command group: output helpers, and the options of the commands that
issue certificates (``issue``, ``iot provision``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pki.cli.output import err, print_json

__all__ = ["err", "print_json"]

KEY_TYPES = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"]


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from pki.model import parse_duration

    return None if value is None else parse_duration(value)


def pem_or_der_option(help_text: str) -> Callable[[Any], Any]:
    """``--format pem|der`` (default pem) for a command that prints one object."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["pem", "der"]),
        default="pem",
        show_default=True,
        help=help_text,
    )


def next_update_option(default: str) -> Callable[[Any], Any]:
    """``--next-update DURATION`` as a ``timedelta`` (None: the config's), for every
    command that signs a CRL."""
    return click.option(
        "--next-update",
        "window",
        default=None,
        metavar="DURATION",
        callback=_duration,
        help=f"Time until the CRL's nextUpdate (7d, 36h; default from config.json: {default}).",
    )


def csr_option(made_on: str) -> Callable[[Any], Any]:
    return click.option(
        "--csr",
        "csr_file",
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        help=f"CSR made on the {made_on}, PEM or DER ('-': standard input).",
    )


generate_key_option = click.option(
    "--generate-key",
    is_flag=True,
    help="Make the key here and write it to OUT/key.pem (0600) instead of using a CSR.",
)

key_type_option = click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="ec-p256",
    show_default=True,
    help="Key type for --generate-key.",
)

out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder for cert.pem, chain.pem and fullchain.pem.",
)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "der", "pkcs12"]),
    default="pem",
    show_default=True,
    help="pem: cert.pem, chain.pem, fullchain.pem (+ key.pem). der: cert.der, issuing-ca.der, "
    "root-ca.der (+ key.der). pkcs12: bundle.p12 with the key and chain (Java), only with "
    "--generate-key; its passphrase from FLEETPKI_P12_PASSPHRASE or --p12-passphrase-file.",
)

p12_option = click.option(
    "--p12-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --format pkcs12: read the bundle's passphrase from this file (first line).",
)

days_option = click.option("--days", type=int, help="Validity in days (default 90, at most 397).")


def batch_option(action: str) -> Callable[[Any], Any]:
    return click.option(
        "--batch",
        "batch_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"{action} every THING.csr in this folder into OUT/THING/.",
    )


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` (which every range comparison lets
    through) and infinities."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


allow_key_reuse_option = click.option(
    "--allow-key-reuse",
    is_flag=True,
    help="Sign although the CSR's key is bound to another thing's (or profile's) active "
    "certificate (audited). Without it that is refused: key-reused.",
)
