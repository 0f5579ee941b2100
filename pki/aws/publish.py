"""Publishing trust bundles and CRLs where AWS endpoints read them, with the ledger.

Nothing is uploaded before the endpoint has been found; an object is written only when it
changed (``pki.aws.s3``); every endpoint change is recorded in the ledger (history,
rollback). AWS errors are never swallowed: they become ``PublishError`` (exit 1) or an
``OperatorError`` (exit 2) when the operator has to fix something.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pki.aws import client as awsclient
from pki.aws.bundles import TrustBundle, der_sha256
from pki.aws.client import AWS_FAILURES
from pki.aws.client import publish_error as _aws_error
from pki.aws.endpoints import (
    ALB,
    ALB_CRL,
    APIGW_HTTP,
    APIGW_REST,
    DENYLIST,
    AlbTrustStore,
    Endpoint,
    endpoint_for,
    ledger_target,
)
from pki.aws.s3 import (
    S3Location,
    Upload,
    denylist_digest,
    denylist_json,
    publish_denylist,
    read_version,
    s3_object_loader,
    upload_if_changed,
)
from pki.clock import Clock
from pki.errors import OperatorError, PublishError
from pki.storage import AuditEvent, BundleVersion, Inventory

# ALB limits per trust store (revocation lists).
ALB_MAX_REVOCATION_LISTS = 30
ALB_MAX_REVOKED_ENTRIES = 500_000
ALB_MAX_REVOCATION_BYTES = 50 * 1024 * 1024

__all__ = [
    "ALB", "ALB_CRL", "APIGW_HTTP", "APIGW_REST", "DENYLIST", "AlbTrustStore", "S3Location",
    "denylist_digest", "denylist_json", "endpoint_for", "ledger_target", "make_client",
    "publish_alb_crl", "publish_bundle", "publish_denylist", "rollback_bundle",
    "s3_object_loader",
]  # fmt: skip


def make_client(service: str, region: str | None = None) -> Any:
    """A boto3 client from the standard settings (``pki.aws.client``)."""
    return awsclient.make_client(service, region)


def _record(
    inventory: Inventory, version: BundleVersion, clock: Clock, detail: Mapping[str, Any]
) -> BundleVersion:
    with inventory.transaction() as conn:
        number = inventory.record_bundle_version(conn, version)
        inventory.audit(
            conn,
            [
                AuditEvent(
                    clock.now(),
                    version.actor,
                    f"bundle-{version.action}",
                    None,
                    {**detail, "ledger_id": number},
                )
            ],
        )
    return BundleVersion(**{**version.__dict__, "id": number})


def publish_bundle(
    bundle: TrustBundle,
    target: str,
    where: S3Location,
    endpoint: Endpoint | None,
    s3: Any,
    inventory: Inventory,
    clock: Clock,
    actor: str,
) -> BundleVersion:
    """Check the endpoint, upload when changed, point the endpoint at the version, record it."""
    if endpoint is not None:
        endpoint.check()
    upload = upload_if_changed(s3, where, bundle.pem)
    if endpoint is not None:
        endpoint.apply(where, upload.version_id)
    version = BundleVersion(
        target=target,
        endpoint=endpoint.name if endpoint else None,
        bucket=where.bucket,
        key=where.key,
        version_id=upload.version_id,
        sha256=upload.sha256,
        certificates=len(bundle),
        action="publish" if endpoint else "upload",
        uploaded=upload.uploaded,
        applied_at=clock.now(),
        actor=actor,
        cas=tuple(der_sha256(c) for c in bundle.certificates),
    )
    return _record(
        inventory,
        version,
        clock,
        {
            "s3": where.uri,
            "version_id": upload.version_id,
            "sha256": upload.sha256,
            "endpoint": version.endpoint,
            "uploaded": upload.uploaded,
        },
    )


def rollback_bundle(
    to: BundleVersion,
    endpoint: Endpoint | None,
    s3: Any,
    inventory: Inventory,
    clock: Clock,
    actor: str,
) -> BundleVersion:
    """Point the endpoint back at an earlier S3 version and make it the current object."""
    where = S3Location(to.bucket, to.key)
    body = read_version(s3, where, to.version_id)
    digest = hashlib.sha256(body).hexdigest()
    if digest != to.sha256:
        raise PublishError(
            f"{where.uri} version {to.version_id} no longer matches the ledger's SHA-256; "
            "refusing to roll back to it"
        )
    if endpoint is not None:
        endpoint.check()
        endpoint.apply(where, to.version_id)
    restored = upload_if_changed(s3, where, body)
    version = BundleVersion(
        target=to.target,
        endpoint=endpoint.name if endpoint else None,
        bucket=to.bucket,
        key=to.key,
        version_id=to.version_id,
        sha256=digest,
        certificates=to.certificates,
        action="rollback",
        uploaded=restored.uploaded,
        applied_at=clock.now(),
        actor=actor,
        cas=to.cas,
    )
    return _record(
        inventory,
        version,
        clock,
        {
            "s3": where.uri,
            "version_id": to.version_id,
            "sha256": digest,
            "endpoint": version.endpoint,
            "current_version": restored.version_id,
        },
    )


# -- revocation: ALB trust-store CRLs and the API Gateway denylist ---------------------


@dataclass(frozen=True)
class AlbRevocation:
    upload: Upload
    revocation_id: int
    removed: tuple[int, ...]
    entries: int


def publish_alb_crl(
    elbv2: Any,
    s3: Any,
    trust_store_arn: str,
    where: S3Location,
    crl_der: bytes,
    entries: int,
    previous_ids: Sequence[int],
) -> AlbRevocation:
    """Upload a CRL and load it into the trust store, replacing our previous list.

    ``previous_ids`` are the revocation IDs fleetpki added before (from the ledger); other
    lists in the trust store are left alone but count against the limits.
    """
    store = AlbTrustStore(elbv2, trust_store_arn)
    if len(crl_der) > ALB_MAX_REVOCATION_BYTES:
        raise OperatorError(
            f"the CRL is {len(crl_der)} bytes; an ALB trust store takes revocation files up "
            "to 50 MB"
        )
    store.check()
    try:
        existing = elbv2.describe_trust_store_revocations(TrustStoreArn=trust_store_arn).get(
            "TrustStoreRevocations", []
        )
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc,
            f"listing the revocations of {trust_store_arn} (elbv2 DescribeTrustStoreRevocations)",
        ) from None
    ours = {int(r["RevocationId"]) for r in existing} & set(previous_ids)
    others = [r for r in existing if int(r["RevocationId"]) not in ours]
    other_entries = sum(int(r.get("NumberOfRevokedEntries", 0)) for r in others)
    if len(others) + 1 > ALB_MAX_REVOCATION_LISTS:
        raise OperatorError(
            f"trust store {trust_store_arn} already holds {len(others)} revocation lists not "
            f"published by fleetpki; ALB allows {ALB_MAX_REVOCATION_LISTS}"
        )
    if other_entries + entries > ALB_MAX_REVOKED_ENTRIES:
        raise OperatorError(
            f"{entries} revoked entries plus {other_entries} already loaded exceed the ALB "
            f"limit of {ALB_MAX_REVOKED_ENTRIES} per trust store"
        )
    upload = upload_if_changed(s3, where, crl_der, "application/pkix-crl")
    # Make room first only when adding would break the list limit; otherwise add, then remove,
    # so the trust store is never without our revocations.
    remove_first = len(existing) + 1 > ALB_MAX_REVOCATION_LISTS
    if remove_first and ours:
        _remove_revocations(elbv2, trust_store_arn, sorted(ours))
    try:
        added = elbv2.add_trust_store_revocations(
            TrustStoreArn=trust_store_arn,
            RevocationContents=[
                {
                    "S3Bucket": where.bucket,
                    "S3Key": where.key,
                    "S3ObjectVersion": upload.version_id,
                    "RevocationType": "CRL",
                }
            ],
        )["TrustStoreRevocations"]
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc, f"adding the CRL to trust store {trust_store_arn} (elbv2 AddTrustStoreRevocations)"
        ) from None
    if not added:
        raise PublishError(f"trust store {trust_store_arn} returned no revocation ID")
    if not remove_first and ours:
        _remove_revocations(elbv2, trust_store_arn, sorted(ours))
    return AlbRevocation(upload, int(added[0]["RevocationId"]), tuple(sorted(ours)), entries)


def _remove_revocations(elbv2: Any, arn: str, ids: Sequence[int]) -> None:
    try:
        elbv2.remove_trust_store_revocations(TrustStoreArn=arn, RevocationIds=list(ids))
    except AWS_FAILURES as exc:
        raise _aws_error(
            exc, f"removing old revocation lists from {arn} (elbv2 RemoveTrustStoreRevocations)"
        ) from None
