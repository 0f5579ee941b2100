"""``fleetpki revoke`` and ``fleetpki crl``: revocation and the CRLs of every CA."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pki.app import App
from pki.cli.options import (
    err,
    next_update_option,
    pem_or_der_option,
    print_json,
)
from pki.cli.root import cli, pass_app

if TYPE_CHECKING:
    pass


# ------------------------------------------------------------------------ revoke / crl


@cli.command("revoke")
@click.argument("serial")
@click.option(
    "--reason",
    type=click.Choice(
        [
            "unspecified",
            "key-compromise",
            "ca-compromise",
            "affiliation-changed",
            "superseded",
            "cessation-of-operation",
            "privilege-withdrawn",
        ]
    ),
    default="unspecified",
    show_default=True,
    help="RFC 5280 revocation reason.",
)
@click.option(
    "--no-crl",
    is_flag=True,
    help="Do not re-sign HOME/crl/issuing.crl.pem (run 'fleetpki crl' later).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@pass_app
def revoke_cmd(app: App, serial: str, reason: str, no_crl: bool, as_json: bool) -> None:
    """Revoke a certificate. Idempotent: revoking twice keeps the first reason, and finishes
    what an interrupted revocation left undone (the CRL, the revocation hooks)."""
    from pki.backends import CrlSigner
    from pki.model import RevocationReason, parse_serial
    from pki.revocation.revoke import revoke_and_publish

    ca = app.ca()
    done = revoke_and_publish(
        app.home,
        app.inventory(),
        ca,
        app.clock,
        [parse_serial(serial)],
        RevocationReason(reason),
        app.home.actor(),
        sign_crl=not no_crl,
    )
    result = done.results[0]
    record = result.record
    if result.changed and not isinstance(ca, CrlSigner):
        err(
            f"{ca.name}: AWS Private CA writes its own CRL to its S3 bucket, typically about "
            "30 minutes after a revocation; it is not immediate"
        )
    if done.crl is not None:
        plural = "entry" if done.crl.entries == 1 else "entries"
        err(
            f"CRL #{done.crl.number} with {done.crl.entries} {plural} written to {done.crl_path}"
            f" (every CA's CRLs: {app.home.combined_crl_path})"
        )
    for warning in done.warnings:
        err(f"fleetpki: warning: {warning}")
    if as_json:
        print_json(record.to_json(app.now()) | {"changed": result.changed})
        return
    if result.changed:
        err(f"revoked {record.serial_hex} ({record.thing or record.common_name}), reason {reason}")
    else:
        reason_text = record.revocation_reason.value if record.revocation_reason else "unspecified"
        err(
            f"{record.serial_hex} was already revoked at {record.revoked_at:%Y-%m-%d %H:%M}Z "
            f"(reason {reason_text}); the inventory is unchanged"
        )


@cli.group("crl", invoke_without_command=True)
@click.option(
    "--root",
    "root",
    is_flag=True,
    help="Sign the root CA's CRL (the subordinate CAs it revoked) instead of the issuing "
    "CA's. Needs the root key: in the home, or --root-key FILE when it is kept offline.",
)
@click.option(
    "--root-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --root: the root CA's encrypted key file, when it is not in the home "
    "(its passphrase: FLEETPKI_ROOT_PASSPHRASE, else FLEETPKI_CA_PASSPHRASE).",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the CRL here (default: stdout). HOME/crl/ is always updated.",
)
@pem_or_der_option("Encoding of what goes to --out or stdout (HTTP distribution points serve DER).")
@next_update_option("crl_next_update_days, 7; root_crl_next_update_days, 180, with --root")
@click.option("--json", "as_json", is_flag=True, help="Print what was signed as JSON.")
@click.pass_context
def crl_cmd(
    ctx: click.Context,
    root: bool,
    root_key: Path | None,
    out_file: Path | None,
    fmt: str,
    window: dt.timedelta | None,
    as_json: bool,
) -> None:
    """Sign a full CRL of the issuing CA (or, with --root, of the root CA) with the next
    CRL number, and publish it in HOME/crl/:

    \b
      issuing.crl.pem, root.crl.pem   one CA's CRL each (Node: crl: [both files])
      combined.crl.pem                every CA's CRL (nginx ssl_crl, openssl -CRLfile,
                                      Java, GnuTLS, Mosquitto crlfile)
      issuing.crl, root.crl           DER, for an HTTP CRL distribution point

    thisUpdate is backdated like notBefore (crl_backdate_seconds, 5 minutes). The root's
    CRL is re-signed here too when it is due and the root key is at hand; otherwise a
    warning says when it runs out. 'fleetpki crl publish' loads a CRL into ALB trust
    stores and writes the API Gateway denylist.
    """
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    if root_key is not None and not root:
        from pki.errors import InvalidInput

        raise InvalidInput("--root-key goes with --root")
    app.root_key = root_key
    _sign_crl(app, "root" if root else "issuing", out_file, fmt, window, as_json)


def _sign_crl(
    app: App,
    which: str,
    out_file: Path | None,
    fmt: str,
    window: dt.timedelta | None,
    as_json: bool,
) -> None:
    from pki.errors import InvalidInput
    from pki.model import isoformat
    from pki.revocation.signing import sign_on_request

    if out_file is None and fmt == "der" and sys.stdout.isatty():
        raise InvalidInput("refusing to write DER to a terminal; use --out FILE")
    signed = sign_on_request(app, which, window, out_file, fmt)
    result = signed.result
    if out_file is None and not as_json:
        sys.stdout.buffer.write(signed.data)
        sys.stdout.flush()
    files = app.home.crl_files
    summary = {
        "ca": which,
        "number": result.number,
        "entries": result.entries,
        "this_update": isoformat(result.crl.last_update_utc),
        "next_update": isoformat(result.crl.next_update_utc),
        "path": str(out_file or files.pem(which)),
        "files": {
            "pem": str(files.pem(which)),
            "der": str(files.der(which)),
            "combined": str(files.combined),
        },
        "published": result.written,
        "warnings": list(signed.warnings),
    }
    if as_json:
        print_json(summary)
        return
    if result.resynced_from is not None:
        err(
            f"the published {which} CRL had number #{result.resynced_from}, ahead of the "
            "inventory (restored from a backup?): the new CRL's number goes past it"
        )
    where = f", written to {out_file}" if out_file else ""
    err(
        f"{which} CRL #{result.number}: {result.entries} revoked, next update "
        f"{summary['next_update']}{where}; all CRLs in {files.combined}"
    )
    if not result.written:
        err(
            f"fleetpki: warning: a newer {which} CRL was published meanwhile; "
            f"{files.pem(which)} keeps it"
        )
    for warning in signed.warnings:
        err(f"fleetpki: warning: {warning}")
