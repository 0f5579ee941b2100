"""The trust-side workflows every front end calls with an ``App``: build the bundle of the
CA certificates API Gateway or ALB must trust, publish it (S3 + endpoint + ledger), roll
it back, and publish revocations where AWS endpoints read them (a CRL into an ALB trust
store, the denylist of API Gateway's authorizer)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from pki.aws.bundles import Target, TrustBundle, build_bundle, parse_strict, require_target
from pki.errors import InvalidInput
from pki.files import read_limited
from pki.model import Status, isoformat
from pki.storage import BundleVersion

if TYPE_CHECKING:
    from pki.app import App

# what an --include file may hold: far more than any trust store takes (API Gateway 1 MB)
MAX_INCLUDE_BYTES = 1024 * 1024


def ca_certificates(app: App, status: Status | None = Status.ACTIVE) -> list[x509.Certificate]:
    """The root and issuing CA certificates recorded in the inventory: the active
    (unexpired) ones, or those of ``status`` (None: all)."""
    inventory = app.inventory()
    certs = []
    for profile in ("root-ca", "issuing-ca"):
        for record in inventory.find(
            now=app.now(), include_ca=True, profile=profile, status=status
        ):
            certs.append(x509.load_pem_x509_certificate(inventory.get_pem(record.serial).encode()))
    return certs


def compile_bundle(
    app: App, target: Target, includes: Sequence[Path], max_certificates: int
) -> TrustBundle:
    """The bundle ``target`` would load: the active CAs plus the ``includes`` (another CA
    generation, say), strict and deterministic, every limit of the target checked."""
    certs = ca_certificates(app)
    for path in includes:
        found = parse_strict(read_limited(path, MAX_INCLUDE_BYTES, "--include"), str(path))
        if not found:  # a failed download must not publish a bundle without the new CA
            raise InvalidInput(f"--include {path} holds no certificate")
        certs.extend(found)
    return require_target(build_bundle(certs, app.now()), target, max_certificates=max_certificates)


@dataclass(frozen=True)
class BundleTarget:
    """Where a bundle goes: the S3 object and the endpoint that reads it."""

    target: Target
    bucket: str
    key: str
    domain: str | None = None  # API Gateway custom domain
    api: str = "rest"  # rest | http
    trust_store: str | None = None  # ALB trust store ARN

    def check(self) -> None:
        if self.target is Target.APIGW and self.trust_store:
            raise InvalidInput("--trust-store is for --target alb; use --domain for API Gateway")
        if self.target is Target.ALB and self.domain:
            raise InvalidInput("--domain is for --target apigw; use --trust-store for ALB")
        if self.target is Target.ALB and not self.trust_store:
            raise InvalidInput("--target alb needs --trust-store ARN")


def publish(
    app: App, where: BundleTarget, includes: Sequence[Path], max_certificates: int
) -> BundleVersion:
    """Upload the bundle when it changed, point the endpoint at that S3 version (API
    Gateway: rolled back on any truststore warning), and record it in the ledger."""
    from pki.aws import publish as aws

    where.check()
    location = aws.S3Location.of(where.bucket, where.key)
    bundle = compile_bundle(app, where.target, includes, max_certificates)
    name = where.domain or where.trust_store
    target_name = aws.ledger_target(where.target, where.api)
    endpoint = aws.endpoint_for(target_name, name, aws.make_client) if name else None
    return aws.publish_bundle(
        bundle, target_name, location, endpoint, aws.make_client("s3"), app.inventory(),
        app.clock, app.actor,
    )  # fmt: skip


def rollback(app: App, to: str) -> BundleVersion:
    """Point the endpoint of a ledger entry (``#N`` or an S3 VersionId) back at its
    version, which becomes the current S3 object again, byte for byte."""
    from pki.aws import publish as aws

    inventory = app.inventory()
    entry = inventory.find_bundle_version(to.lstrip("#"))
    bundles = {aws.APIGW_REST, aws.APIGW_HTTP, aws.ALB}
    if entry.target not in bundles:
        raise InvalidInput(f"ledger entry #{entry.id} is a {entry.target} entry, not a bundle")
    endpoint = (
        aws.endpoint_for(entry.target, entry.endpoint, aws.make_client) if entry.endpoint else None
    )
    return aws.rollback_bundle(
        entry, endpoint, aws.make_client("s3"), inventory, app.clock, app.actor
    )


@dataclass(frozen=True)
class AlbCrl:
    """A CRL loaded into an ALB trust store."""

    trust_store: str
    crl_number: int
    entries: int
    s3: str
    version_id: str
    revocation_id: int
    removed: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "trust_store": self.trust_store, "crl_number": self.crl_number,
            "entries": self.entries, "s3": self.s3, "version_id": self.version_id,
            "revocation_id": self.revocation_id, "removed_revocation_ids": list(self.removed),
        }  # fmt: skip


@dataclass(frozen=True)
class RevocationTargets:
    """Where ``crl publish`` sends revocations, every part checked before anything is
    signed or uploaded."""

    trust_store: str | None
    crl_uri: str | None
    denylist: str | None

    @classmethod
    def checked(
        cls, trust_store: str | None, crl_uri: str | None, denylist: str | None
    ) -> RevocationTargets:
        from pki.aws import publish as aws
        from pki.errors import InvalidInput

        if not trust_store and not denylist:
            raise InvalidInput("give --trust-store ARN (with --crl-uri) and/or --denylist s3://...")
        if trust_store and not crl_uri:
            raise InvalidInput("--trust-store needs --crl-uri s3://BUCKET/KEY for the CRL file")
        if crl_uri and not trust_store:
            raise InvalidInput("--crl-uri is only used with --trust-store")
        for uri in (crl_uri, denylist):
            if uri:
                aws.S3Location.parse(uri)
        return cls(trust_store, crl_uri, denylist)


def publish_crl_to_alb(
    app: App, trust_store: str, crl_uri: str, next_update: dt.timedelta | None
) -> AlbCrl:
    """Sign the issuing CA's next CRL (published in the home too), upload it to
    ``crl_uri`` and load it into the ALB trust store in place of the list fleetpki added
    before. The trust store is checked before a CRL number is spent."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from pki.aws import publish as aws
    from pki.revocation.signing import sign_and_publish

    where = aws.S3Location.parse(crl_uri)
    inventory = app.inventory()
    elbv2 = aws.make_client("elbv2")
    aws.AlbTrustStore(elbv2, trust_store).check()
    result = sign_and_publish(
        app.home, inventory, app.ca(), app.clock, app.actor, next_update=next_update
    )
    alb = aws.publish_alb_crl(
        elbv2, aws.make_client("s3"), trust_store, where, result.crl.public_bytes(Encoding.DER),
        result.entries, inventory.revocation_ids(trust_store),
    )  # fmt: skip
    _record(app, aws.ALB_CRL, trust_store, where, alb.upload, result.entries, alb.revocation_id)
    return AlbCrl(
        trust_store, result.number, result.entries, where.uri, alb.upload.version_id,
        alb.revocation_id, tuple(alb.removed),
    )  # fmt: skip


@dataclass(frozen=True)
class Denylist:
    s3: str
    serials: int
    version_id: str
    uploaded: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "s3": self.s3, "serials": self.serials, "version_id": self.version_id,
            "uploaded": self.uploaded,
        }  # fmt: skip


def publish_denylist(app: App, uri: str) -> Denylist:
    """API Gateway never checks revocation: write the revoked, unexpired serials its
    Lambda authorizer (``pki.aws.authorizer``) denies (uploaded only when it changed)."""
    from pki.aws import publish as aws

    where = aws.S3Location.parse(uri)
    now = app.now()
    serials = [
        r.serial
        for r in app.inventory().find(now=now, status=Status.REVOKED, include_ca=True)
        if r.not_after > now
    ]
    body = aws.denylist_json(serials, isoformat(now) or "", "fleetpki")
    upload = aws.publish_denylist(aws.make_client("s3"), where, body)
    _record(app, aws.DENYLIST, where.uri, where, upload, len(serials), None)
    return Denylist(where.uri, len(set(serials)), upload.version_id, upload.uploaded)


def _record(
    app: App, target: str, endpoint: str, where: Any, upload: Any, count: int,
    revocation_id: int | None,
) -> None:  # fmt: skip
    inventory = app.inventory()
    with inventory.transaction() as conn:
        inventory.record_bundle_version(
            conn,
            BundleVersion(
                target=target, endpoint=endpoint, bucket=where.bucket, key=where.key,
                version_id=upload.version_id, sha256=upload.sha256, certificates=count,
                action="publish", uploaded=upload.uploaded, applied_at=app.now(),
                actor=app.actor, revocation_id=revocation_id,
            ),
        )  # fmt: skip
