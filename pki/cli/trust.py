"""``fleetpki bundle ...`` and ``fleetpki crl publish``: the trust side of mTLS on AWS.

Registered by ``pki.cli``; heavy modules (boto3 through ``pki.publish``) load inside the
commands only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.cli.options import err, print_json

if TYPE_CHECKING:
    from cryptography import x509

    from pki.app import App
    from pki.bundles import Target, TrustBundle


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


def inventory_ca_certificates(app: App) -> list[x509.Certificate]:
    """The active (unexpired) root and issuing CA certificates recorded in the inventory."""
    from cryptography import x509

    from pki.model import Status

    inventory = app.inventory()
    certs = []
    for profile in ("root-ca", "issuing-ca"):
        for record in inventory.find(
            now=app.now(), include_ca=True, profile=profile, status=Status.ACTIVE
        ):
            certs.append(x509.load_pem_x509_certificate(inventory.get_pem(record.serial).encode()))
    return certs


def compile_bundle(
    app: App, target: Target, includes: tuple[Path, ...], max_certificates: int
) -> TrustBundle:
    from pki.bundles import build_bundle, parse_strict, require_target
    from pki.errors import InvalidInput
    from pki.files import read_limited

    certs = inventory_ca_certificates(app)
    for path in includes:
        data = read_limited(path, MAX_INCLUDE_BYTES, "--include")
        found = parse_strict(data, str(path))
        if not found:  # a failed download must not publish a bundle without the new CA
            raise InvalidInput(f"--include {path} holds no certificate")
        certs.extend(found)
    bundle = build_bundle(certs, app.now())
    return require_target(bundle, target, max_certificates=max_certificates)


# what an --include file may hold: far more than any trust store takes (API Gateway 1 MB)
MAX_INCLUDE_BYTES = 1024 * 1024


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
    from pki.bundles import Target
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
    from pki.bundles import Target
    from pki.errors import InvalidInput

    kind = Target(target)
    if kind is Target.APIGW and trust_store:
        raise InvalidInput("--trust-store is for --target alb; use --domain for API Gateway")
    if kind is Target.ALB and domain:
        raise InvalidInput("--domain is for --target apigw; use --trust-store for ALB")
    if kind is Target.ALB and not trust_store:
        raise InvalidInput("--target alb needs --trust-store ARN")
    from pki import publish

    where = publish.S3Location.of(bucket, key)
    result = compile_bundle(app, kind, includes, max_certificates)
    name = domain or trust_store
    target_name = publish.ledger_target(kind, api)
    endpoint = publish.endpoint_for(target_name, name) if name else None
    row = publish.publish_bundle(
        result,
        target_name,
        where,
        endpoint,
        publish.make_client("s3"),
        app.inventory(),
        app.clock,
        app.home.actor(),
    )
    if as_json:
        print_json(row.to_json())
        return
    what = "uploaded" if row.uploaded else "unchanged, kept"
    err(
        f"bundle {row.sha256[:16]} ({row.certificates} CA certificate(s)) {what} "
        f"{where.uri} version {row.version_id}"
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
    from pki import publish

    inventory = app.inventory()
    entry = inventory.find_bundle_version(to.lstrip("#"))
    if entry.target not in {publish.APIGW_REST, publish.APIGW_HTTP, publish.ALB}:
        from pki.errors import InvalidInput

        raise InvalidInput(f"ledger entry #{entry.id} is a {entry.target} entry, not a bundle")
    endpoint = (
        publish.endpoint_for(entry.target, entry.endpoint)
        if entry.endpoint and entry.target in {publish.APIGW_REST, publish.APIGW_HTTP, publish.ALB}
        else None
    )
    row = publish.rollback_bundle(
        entry,
        endpoint,
        publish.make_client("s3"),
        inventory,
        app.clock,
        app.home.actor(),
    )
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
@click.option(
    "--next-update",
    default=None,
    metavar="DURATION",
    help="Time until the CRL's nextUpdate (default from config.json: 7d).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was published as JSON.")
@click.pass_obj
def crl_publish(
    app: App,
    trust_store: str | None,
    crl_uri: str | None,
    denylist: str | None,
    next_update: str | None,
    as_json: bool,
) -> None:
    """Publish revocations where AWS endpoints read them.

    --trust-store: sign a new CRL, upload it to --crl-uri and add it to the ALB trust store
    as a revocation list, replacing the list fleetpki added before (limits: 30 lists,
    500,000 entries, 50 MB per trust store). --denylist: API Gateway never checks
    revocation, so write the compact list of revoked serials its Lambda authorizer
    (pki/authorizer.py) denies.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.errors import InvalidInput
    from pki.model import isoformat, parse_duration

    if not trust_store and not denylist:
        raise InvalidInput("give --trust-store ARN (with --crl-uri) and/or --denylist s3://...")
    if trust_store and not crl_uri:
        raise InvalidInput("--trust-store needs --crl-uri s3://BUCKET/KEY for the CRL file")
    if crl_uri and not trust_store:
        raise InvalidInput("--crl-uri is only used with --trust-store")
    from pki import publish
    from pki.model import Status
    from pki.storage import BundleVersion

    crl_where = publish.S3Location.parse(crl_uri) if crl_uri else None
    deny_where = publish.S3Location.parse(denylist) if denylist else None
    window = parse_duration(next_update) if next_update is not None else None
    inventory = app.inventory()
    actor = app.home.actor()
    summary: dict[str, Any] = {}
    s3 = publish.make_client("s3")
    if trust_store and crl_where:
        from pki.revocation import sign_and_publish

        elbv2 = publish.make_client("elbv2")
        publish.AlbTrustStore(elbv2, trust_store).check()  # before a CRL number is used
        # the home's CRL files follow: the CRL loaded into ALB is the one published here
        result = sign_and_publish(
            app.home, inventory, app.ca(), app.clock, actor, next_update=window
        )
        der = result.crl.public_bytes(Encoding.DER)
        alb = publish.publish_alb_crl(
            elbv2,
            s3,
            trust_store,
            crl_where,
            der,
            result.entries,
            inventory.revocation_ids(trust_store),
        )
        with inventory.transaction() as conn:
            inventory.record_bundle_version(
                conn,
                BundleVersion(
                    target=publish.ALB_CRL,
                    endpoint=trust_store,
                    bucket=crl_where.bucket,
                    key=crl_where.key,
                    version_id=alb.upload.version_id,
                    sha256=alb.upload.sha256,
                    certificates=result.entries,
                    action="publish",
                    uploaded=alb.upload.uploaded,
                    applied_at=app.now(),
                    actor=actor,
                    revocation_id=alb.revocation_id,
                ),
            )
        summary["alb"] = {
            "trust_store": trust_store,
            "crl_number": result.number,
            "entries": result.entries,
            "s3": crl_where.uri,
            "version_id": alb.upload.version_id,
            "revocation_id": alb.revocation_id,
            "removed_revocation_ids": list(alb.removed),
        }
        if not as_json:
            err(
                f"CRL #{result.number} ({result.entries} revoked) loaded into {trust_store} "
                f"as revocation list {alb.revocation_id}"
                + (f", replacing {', '.join(map(str, alb.removed))}" if alb.removed else "")
            )
    if deny_where:
        now = app.now()
        serials = [
            r.serial
            for r in inventory.find(now=now, status=Status.REVOKED, include_ca=True)
            if r.not_after > now
        ]
        body = publish.denylist_json(serials, isoformat(now) or "", "fleetpki")
        upload = publish.publish_denylist(s3, deny_where, body)
        with inventory.transaction() as conn:
            inventory.record_bundle_version(
                conn,
                BundleVersion(
                    target=publish.DENYLIST,
                    endpoint=deny_where.uri,
                    bucket=deny_where.bucket,
                    key=deny_where.key,
                    version_id=upload.version_id,
                    sha256=upload.sha256,
                    certificates=len(serials),
                    action="publish",
                    uploaded=upload.uploaded,
                    applied_at=now,
                    actor=actor,
                ),
            )
        summary["denylist"] = {
            "s3": deny_where.uri,
            "serials": len(set(serials)),
            "version_id": upload.version_id,
            "uploaded": upload.uploaded,
        }
        if not as_json:
            err(
                f"denylist of {len(set(serials))} revoked serial(s) "
                f"{'written to' if upload.uploaded else 'unchanged at'} {deny_where.uri} "
                f"version {upload.version_id}"
            )
    if as_json:
        print_json(summary)
