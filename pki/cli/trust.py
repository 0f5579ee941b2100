"""``fleetpki bundle ...`` and ``fleetpki crl publish``: the trust side of mTLS on AWS.

Registered by ``pki.cli``; heavy modules (boto3 through ``pki.aws.publish``) load inside the
commands only.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.cli.options import err, next_update_option, print_json

if TYPE_CHECKING:
    from pki.app import App


_target_option = click.option(
    "--target",
    type=click.Choice(["apigw", "alb"]),
    required=True,
    help="The endpoint kind whose limits the bundle must meet.",
)
_include_option = click.option(
    "--include",
    "includes",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also trust the CA certificates in this PEM file (repeatable), e.g. a second CA "
    "generation during a rollover.",
)
_max_option = click.option(
    "--max-certificates",
    type=click.IntRange(min=1, max=1000),
    default=25,
    show_default=True,
    help="ALB trust-store quota of CA certificates (raise only with a raised quota).",
)


@click.group("bundle")
def bundle() -> None:
    """Build, publish, audit and roll back the CA bundle API Gateway and ALB trust."""


@bundle.command("build")
@_target_option
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bundle here (default: stdout).",
)
@_include_option
@_max_option
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@click.pass_obj
def bundle_build(
    app: App,
    target: str,
    out_file: Path | None,
    includes: tuple[Path, ...],
    max_certificates: int,
    as_json: bool,
) -> None:
    """Compile the deterministic PEM bundle of the active CA certificates and check it.

    Only CERTIFICATE blocks, de-duplicated by SHA-256 of DER, in a stable order; expired,
    non-CA and private-key input and an empty bundle are refused, and so is anything the
    target (API Gateway or ALB) would not accept. Every violation is named.
    """
    from pki.aws.bundles import Target
    from pki.aws.trust import compile_bundle
    from pki.files import atomic_write

    kind = Target(target)
    result = compile_bundle(app, kind, includes, max_certificates)
    if out_file is not None:
        atomic_write(out_file, result.pem, 0o644)
    elif not as_json:
        sys.stdout.buffer.write(result.pem)
        sys.stdout.flush()
    summary = {
        "target": target,
        "certificates": len(result),
        "sha256": result.sha256,
        "subjects": [c.subject.rfc4514_string() for c in result.certificates],
        "path": str(out_file) if out_file else None,
    }
    if as_json:
        print_json(summary)
    else:
        err(
            f"bundle for {kind.label}: {len(result)} CA certificate(s), sha256 {result.sha256}"
            + (f", written to {out_file}" if out_file else "")
        )


@bundle.command("publish")
@_target_option
@click.option("--bucket", required=True, help="Versioned S3 bucket for the bundle.")
@click.option("--key", "key", required=True, help="S3 object key of the bundle.")
@click.option("--domain", help="API Gateway custom domain to point at the new version.")
@click.option(
    "--api",
    type=click.Choice(["rest", "http"]),
    default="rest",
    show_default=True,
    help="The custom domain belongs to a REST API (apigateway) or an HTTP API (apigatewayv2).",
)
@click.option("--trust-store", "trust_store", help="ALB trust store ARN to modify.")
@_include_option
@_max_option
@click.option("--json", "as_json", is_flag=True, help="Print the ledger row as JSON.")
@click.pass_obj
def bundle_publish(
    app: App,
    target: str,
    bucket: str,
    key: str,
    domain: str | None,
    api: str,
    trust_store: str | None,
    includes: tuple[Path, ...],
    max_certificates: int,
    as_json: bool,
) -> None:
    """Upload the bundle to S3 when it changed and point the endpoint at that version.

    API Gateway: the custom domain's truststoreVersion is updated, its truststoreWarnings
    read back, and on any warning the domain is rolled back to its previous version.
    ALB: modify_trust_store with the object version. Every change goes to the ledger.
    """
    from pki.aws import trust
    from pki.aws.bundles import Target

    where = trust.BundleTarget(Target(target), bucket, key, domain, api, trust_store)
    row = trust.publish(app, where, includes, max_certificates)
    if as_json:
        print_json(row.to_json())
        return
    what = "uploaded" if row.uploaded else "unchanged, kept"
    err(
        f"bundle {row.sha256[:16]} ({row.certificates} CA certificate(s)) {what} "
        f"s3://{row.bucket}/{row.key} version {row.version_id}"
        + (f"; {row.endpoint} now trusts that version" if row.endpoint else "")
        + f" (ledger #{row.id})"
    )


@bundle.command("history")
@click.option(
    "--limit", type=click.IntRange(min=1, max=1_000_000_000), help="Only the last N entries."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def bundle_history(app: App, limit: int | None, as_json: bool) -> None:
    """The ledger: bundle hash, S3 version, endpoint and time applied, oldest first."""
    from pki.model import isoformat

    rows = app.inventory().bundle_history(limit)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    for r in rows:
        click.echo(
            f"#{r.id} {isoformat(r.applied_at)} {r.action:<8} {r.target:<10} "
            f"{r.endpoint or '-'} s3://{r.bucket}/{r.key} version {r.version_id} "
            f"sha256 {r.sha256[:16]}"
        )
    err(f"{len(rows)} ledger entr{'y' if len(rows) == 1 else 'ies'}")


@bundle.command("rollback")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="VERSION",
    help="Ledger entry number (#N in 'bundle history') or S3 VersionId.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new ledger row as JSON.")
@click.pass_obj
def bundle_rollback(app: App, to: str, as_json: bool) -> None:
    """Point the endpoint of that ledger entry back at its S3 version, byte for byte.

    The version also becomes the current S3 object again (same bytes and hash).
    """
    from pki.aws.trust import rollback

    row = rollback(app, to)
    if as_json:
        print_json(row.to_json())
        return
    err(
        f"rolled back to s3://{row.bucket}/{row.key} version {row.version_id} "
        f"(sha256 {row.sha256[:16]})"
        + (f"; {row.endpoint} trusts it again" if row.endpoint else "")
        + f" (ledger #{row.id})"
    )


@click.command("publish")
@click.option("--trust-store", "trust_store", help="ALB trust store ARN to load the CRL into.")
@click.option(
    "--crl-uri",
    metavar="s3://BUCKET/KEY",
    help="Where the CRL file goes (versioned bucket); needed with --trust-store.",
)
@click.option(
    "--denylist",
    metavar="s3://BUCKET/KEY",
    help="Write the revoked-serials object the API Gateway Lambda authorizer loads.",
)
@next_update_option("crl_next_update_days, 7")
@click.option("--json", "as_json", is_flag=True, help="Print what was published as JSON.")
@click.pass_obj
def crl_publish(
    app: App,
    trust_store: str | None,
    crl_uri: str | None,
    denylist: str | None,
    window: dt.timedelta | None,
    as_json: bool,
) -> None:
    """Publish revocations where AWS endpoints read them.

    --trust-store: sign a new CRL, upload it to --crl-uri and add it to the ALB trust store
    as a revocation list, replacing the list fleetpki added before (limits: 30 lists,
    500,000 entries, 50 MB per trust store). --denylist: API Gateway never checks
    revocation, so write the compact list of revoked serials its Lambda authorizer
    (pki/aws/authorizer.py) denies.
    """
    from pki.aws import trust

    trust.RevocationTargets.checked(trust_store, crl_uri, denylist)  # before anything is done
    summary: dict[str, Any] = {}
    if trust_store and crl_uri:
        alb = trust.publish_crl_to_alb(app, trust_store, crl_uri, window)
        summary["alb"] = alb.to_json()
        if not as_json:
            replacing = f", replacing {', '.join(map(str, alb.removed))}" if alb.removed else ""
            err(
                f"CRL #{alb.crl_number} ({alb.entries} revoked) loaded into {trust_store} "
                f"as revocation list {alb.revocation_id}{replacing}"
            )
    if denylist:
        deny = trust.publish_denylist(app, denylist)
        summary["denylist"] = deny.to_json()
        if not as_json:
            done = "written to" if deny.uploaded else "unchanged at"
            err(
                f"denylist of {deny.serials} revoked serial(s) {done} {deny.s3} "
                f"version {deny.version_id}"
            )
    if as_json:
        print_json(summary)
